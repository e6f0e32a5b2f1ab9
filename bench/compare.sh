#!/usr/bin/env bash
# Ours against PyTorch on the same machine, in one go: `runner bench --json` and
# bench/pytorch_reference.py take turns ROUNDS times with the same net, batch, steps and threads,
# and the median ratios (ours / PyTorch) are printed for training and evaluation images/s and peak
# memory. Alternating rounds make a busy host slow both sides alike.
#
#   bench/compare.sh [--depth 20] [--batch 128] [--threads 2] [--rounds 3] [--steps 6] [--arch resnet]
#                    [--channels-last]   (PyTorch in its NHWC memory format; ours is unchanged)
#
# Environment: RUNNER (default target/release/runner; built with `cargo build --release` if
# missing), PYTHON (a Python with torch; default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."

depth=20 batch=128 threads=2 rounds=3 steps=6 warmup=2 arch=resnet torch_format=()
while [ $# -gt 0 ]; do
    case "$1" in
        --depth) depth=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --arch) arch=$2; shift 2 ;;
        --channels-last) torch_format=(--channels-last); shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

runner=${RUNNER:-target/release/runner}
python=${PYTHON:-python3}
if [ ! -x "$runner" ]; then
    cargo build --release
fi
if ! "$python" -c 'import torch' 2>/dev/null; then
    echo "compare.sh: $python cannot import torch; set PYTHON to a Python that has it" >&2
    echo "  (python3 -m venv torchenv && torchenv/bin/pip install torch numpy; PYTHON=torchenv/bin/python)" >&2
    exit 2
fi

common=(--arch "$arch" --depth "$depth" --batch "$batch" --steps "$steps" --warmup "$warmup" --threads "$threads")
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "$arch-$depth, batch $batch, $threads threads, $rounds rounds of $warmup+$steps steps, PyTorch ${torch_format[*]:-NCHW}; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" >&2
for r in $(seq "$rounds"); do
    echo "round $r/$rounds" >&2
    "$runner" bench "${common[@]}" --json | sed 's/^/ours /' >>"$out"
    "$python" bench/pytorch_reference.py "${common[@]}" "${torch_format[@]}" | sed 's/^/torch /' >>"$out"
done

python3 - "$out" <<'EOF'
import json, statistics, sys
runs = {"ours": [], "torch": []}
for line in open(sys.argv[1]):
    who, text = line.split(" ", 1)
    runs[who].append(json.loads(text))
fields = [("training images/s", "train_images_per_s"),
          ("evaluation images/s", "eval_images_per_s"),
          ("peak memory MiB", "peak_rss_mib")]
print(f"{'':22}{'ours':>10}{'pytorch':>10}{'ratio':>8}   (medians over {len(runs['ours'])} rounds; ratio = median of per-round ratios)")
for title, key in fields:
    ours = [r[key] for r in runs["ours"]]
    torch = [r[key] for r in runs["torch"]]
    ratio = statistics.median(o / t for o, t in zip(ours, torch))
    print(f"{title:22}{statistics.median(ours):10.1f}{statistics.median(torch):10.1f}{ratio:7.2f}×")
EOF
