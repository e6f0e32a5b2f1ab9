#!/usr/bin/env bash
# Ours against PyTorch on the same GPU, in one go, for a GPU machine with no Rust toolchain:
# `runner bench --device cuda:0 --json` (dist/runner-cuda, from scripts/build-cuda.sh) and
# bench/pytorch_reference.py --device cuda take turns, round by round, for ResNet-20 and ResNet-56
# at batch 128 and 512. PyTorch runs as its users run it (eager NCHW, TF32 convolutions allowed:
# its default), strict fp32 as ours are (--no-tf32), channels_last, and with the whole training
# step and the evaluation replayed as CUDA graphs. One table: training and evaluation images/s
# (medians of the rounds), each ratio ours / PyTorch eager NCHW, and peak GPU memory.
#
#   bench/compare-gpu.sh [--rounds 1] [--steps 20] [--depths 20,56] [--batches 128,512]
#
# Environment: BIN (default dist/runner-cuda), PYTHON (a Python with CUDA PyTorch; default
# python3). The CUDA libraries are found as scripts/gpu-check.sh finds them.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=1 steps=20 warmup=5 depths=20,56 batches=128,512
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --depths) depths=$2; shift 2 ;;
        --batches) batches=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "compare-gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
BIN=${BIN:-dist/runner-cuda}
python=${PYTHON:-python3}
[ -x "$BIN" ] || { echo "compare-gpu.sh: $BIN not found (build it with scripts/build-cuda.sh)" >&2; exit 2; }
if ! "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "compare-gpu.sh: $python has no PyTorch that sees a GPU" >&2
    exit 2
fi
# shellcheck source=scripts/cuda-libs.sh
. scripts/cuda-libs.sh >&2
if cuda_libs_missing "$BIN" >&2; then echo "compare-gpu.sh: missing shared libraries" >&2; exit 127; fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo "unknown GPU")
echo "$gpu; $rounds rounds of $warmup+$steps steps; $("$python" -c 'import torch; print("PyTorch", torch.__version__, "cuDNN", torch.backends.cudnn.version())')" >&2
IFS=, read -ra ds <<<"$depths"
IFS=, read -ra bs <<<"$batches"
for r in $(seq "$rounds"); do
    for d in "${ds[@]}"; do
        for b in "${bs[@]}"; do
            echo "round $r/$rounds: resnet-$d, batch $b" >&2
            common=(--depth "$d" --batch "$b" --steps "$steps" --warmup "$warmup")
            # who goes first alternates from round to round
            sides=(ours eager strict channels_last graph)
            [ $((r % 2)) -eq 0 ] && sides=(graph channels_last strict eager ours)
            for side in "${sides[@]}"; do
                case $side in
                    ours) line=$("$BIN" bench --arch resnet "${common[@]}" --device cuda:0 --json) ;;
                    eager) line=$("$python" bench/pytorch_reference.py "${common[@]}" --device cuda) ;;
                    strict) line=$("$python" bench/pytorch_reference.py "${common[@]}" --device cuda --no-tf32) ;;
                    channels_last) line=$("$python" bench/pytorch_reference.py "${common[@]}" --device cuda --channels-last) ;;
                    graph) line=$("$python" bench/pytorch_reference.py "${common[@]}" --device cuda --cuda-graph) ;;
                esac
                echo "$d $b $side $line" >>"$out"
            done
        done
    done
done

python3 - "$out" <<'EOF'
import json, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    d, b, side, text = line.split(" ", 3)
    runs[(int(d), int(b), side)].append(json.loads(text))
sides = ["ours", "eager", "strict", "channels_last", "graph"]
names = {"ours": "runner", "eager": "torch eager", "strict": "eager no-TF32",
         "channels_last": "channels_last", "graph": "CUDA graph"}
def med(key, d, b, side):
    vals = [r.get(key) for r in runs[(d, b, side)] if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")
for title, key in [("training images/s", "train_images_per_s"), ("evaluation images/s", "eval_images_per_s")]:
    print(f"\n{title}")
    print(f"{'net, batch':<16}" + "".join(f"{names[s]:>15}" for s in sides) + f"{'ours/eager':>12}")
    for d, b in sorted({(d, b) for d, b, _ in runs}):
        row = [med(key, d, b, s) for s in sides]
        print(f"{f'resnet-{d}, {b}':<16}" + "".join(f"{v:15.0f}" for v in row) + f"{row[0] / row[1]:11.2f}x")
print("\npeak GPU memory, MiB (PyTorch: max_memory_allocated; runner: the CUDA memory pool's high-water mark)")
for d, b in sorted({(d, b) for d, b, _ in runs}):
    print(f"{f'resnet-{d}, {b}':<16}" + "".join(f"{med('peak_gpu_mib', d, b, s):15.0f}" for s in sides))
EOF
