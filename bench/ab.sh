#!/usr/bin/env bash
# Two builds of runner side by side, in one go: `A bench --json` and `B bench --json` take turns
# ROUNDS times on the same model (who goes first alternates), and the per-round ratios B / A of
# training and evaluation images/s and of peak memory are printed with their medians. Alternating
# rounds make a busy host slow both builds alike; a number from another run says little.
#
#   bench/ab.sh A B [--rounds 5] [-- BENCH ARGS...]
#   e.g. bench/ab.sh /tmp/runner-main target/release/runner --rounds 5 -- --depth 56 --steps 4
#   or the same binary twice with different settings: A and B may be `env RUNNER_ISA=avx2 runner`
#   style commands quoted as one word each.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,10p' "$0"; exit 2; }
a=$1 b=$2; shift 2
rounds=5
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "ab.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "A: $a; B: $b; bench $*; $rounds rounds; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" >&2
for r in $(seq "$rounds"); do
    order="A B"; [ $((r % 2)) -eq 0 ] && order="B A"
    for who in $order; do
        cmd=$a; [ "$who" = B ] && cmd=$b
        # shellcheck disable=SC2086 # a command with its environment, split on purpose
        $cmd bench --json "$@" | sed "s/^/$who $r /" >>"$out"
    done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    who, r, text = line.split(" ", 2)
    runs.setdefault(int(r), {})[who] = json.loads(text)
fields = [("training img/s", "train_images_per_s"), ("evaluation img/s", "eval_images_per_s"), ("peak MiB", "peak_rss_mib")]
print("round  " + "  ".join(f"{t:>28}" for t, _ in fields))
ratios = {k: [] for _, k in fields}
for r in sorted(runs):
    cells = []
    for _, k in fields:
        x, y = runs[r]["A"][k], runs[r]["B"][k]
        ratios[k].append(y / x)
        cells.append(f"{x:9.1f} → {y:9.1f} ({y / x:5.3f}×)")
    print(f"{r:5}  " + "  ".join(f"{c:>28}" for c in cells))
print("median " + "  ".join(f"{statistics.median(ratios[k]):27.3f}×" for _, k in fields) + "   (B / A)")
PY
