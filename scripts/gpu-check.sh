#!/usr/bin/env bash
# The GPU checks of `runner`, for a GPU machine with NO Rust toolchain (driver >= 580, CUDA 13).
# Run from the repository root with dist/runner-cuda present (built by scripts/build-cuda.sh):
#   scripts/gpu-check.sh
# It runs, under one total time limit of 270 s:
#   1. the GPU ops against their CPU oracles (values and gradients; FAIL is flagged) and timed
#      against Candle's CUDA ops: cuDNN's convolutions, our batch norm, our residual addition;
#   2. a ResNet-20 and a ResNet-56 training benchmark of 30 steps.
# The CUDA libraries (libcublas.so.13, libnvrtc.so.13, libcudnn.so.9, ...) are looked for in a CUDA 13 toolkit
# or in pip wheels (torch cu130 -> nvidia/cu13/lib), as /work/shared/cuda/run-on-gpu.sh does;
# CUDA_LIBS=DIR adds a directory of your own.
set -uo pipefail
BIN=${BIN:-dist/runner-cuda}
TOTAL=${TOTAL_SECONDS:-270}
DEADLINE=$((SECONDS + TOTAL))
[ -x "$BIN" ] || { echo "gpu-check: $BIN not found or not executable (build it with scripts/build-cuda.sh)"; exit 2; }

echo "== gpu-check: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>/dev/null \
  || echo "nvidia-smi: not available"

# shellcheck source=scripts/cuda-libs.sh
. "$(dirname "${BASH_SOURCE[0]}")/cuda-libs.sh"
cuda_libs_missing "$BIN" && { echo "gpu-check: missing shared libraries (see above)"; exit 127; }

failed=0
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
# run NAME ARGS...: one check, with what is left of the total time limit.
run() {
  local name=$1; shift
  local left=$((DEADLINE - SECONDS))
  echo
  echo "== $name"
  echo "\$ $BIN $*"
  if [ "$left" -le 0 ]; then echo "-- skipped: the ${TOTAL} s limit is used up"; failed=1; return; fi
  local start=$SECONDS
  timeout "$left" "$BIN" "$@" 2>&1 | tee "$LOG"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ]; then echo "-- TIMED OUT (${TOTAL} s limit for all checks)"; fi
  # The residual bench flags a wrong result with FAIL in its table but may still exit 0.
  if grep -q 'FAIL' "$LOG"; then echo "-- $name: output reports FAIL"; failed=1; fi
  echo "-- $name: exit $rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || failed=1
}

run "cuDNN convolutions (correctness vs CPU, vs Candle's CUDA conv2d)" bench --op conv --device cuda:0
run "batch norm kernels (correctness vs CPU, vs Candle's BatchNorm)" bench --op batchnorm --device cuda:0
run "fused residual op (correctness vs CPU, fused vs composed)" bench --op residual --device cuda:0
run "ResNet-20, 30 steps" bench --arch resnet --depth 20 --device cuda:0 --steps 30
run "ResNet-56, 30 steps" bench --arch resnet --depth 56 --device cuda:0 --steps 30

echo
if [ "$failed" -eq 0 ]; then echo "== gpu-check: all checks ran"; else echo "== gpu-check: some checks FAILED (see above)"; fi
exit "$failed"
