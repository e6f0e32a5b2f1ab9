#!/usr/bin/env bash
# Builds the CUDA-enabled `runner` (feature `cuda`) on a machine with no GPU and no system CUDA,
# following /work/shared/cuda/build-recipe.sh: the CUDA 13.0 toolchain comes from PyPI wheels
# pinned to what PyTorch 2.11 (cu130) uses, so the binary's libraries exist on a torch-cu130 GPU box.
#
# Usage (from anywhere): scripts/build-cuda.sh
#   It also checks what only this build compiles: our CUDA kernel files (nvcc --ptx, the same
#   sources NVRTC compiles at run time) and clippy on the `cuda` feature's code. CI runs it.
#   Scratch toolchain: .cuda-toolchain/ (gitignored, ~2 GB); target dir: target/cuda (kept apart
#   so the CPU build is not invalidated); output: dist/runner-cuda (stripped, gitignored).
#   First build about 10+ minutes on 2 cores; run it under `nice` on a shared machine.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TOOLS="$REPO/.cuda-toolchain"
PY=${PYTHON:-python3}
mkdir -p "$TOOLS"

# ---- 1. CUDA 13.0 toolchain from PyPI -------------------------------------------------------
# nvidia-nvvm is pinned too: unpinned, nvcc 13.0 pulls nvvm 13.5, whose PTX driver 580 refuses.
[ -x "$TOOLS/venv/bin/pip" ] || "$PY" -m venv "$TOOLS/venv"
"$TOOLS/venv/bin/pip" install -q --disable-pip-version-check \
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
  nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35 \
  nvidia-cudnn-cu13==9.19.0.56
SP=$("$TOOLS/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export CUDA_HOME="$SP/nvidia/cu13"
"$CUDA_HOME/bin/nvcc" --version | tail -2

# ---- 2. link-time libraries: unversioned symlinks and a libcuda stub ------------------------
# The wheels ship only versioned .so files and no libcuda (that comes with the driver). The stub
# only satisfies the linker (SONAME libcuda.so.1); it is never shipped.
cargo fetch -q
LINK="$TOOLS/linklibs"
mkdir -p "$LINK"
for l in cudart:13 cublas:13 cublasLt:13 nvrtc:13 curand:10; do
  ln -sf "$CUDA_HOME/lib/lib${l%%:*}.so.${l##*:}" "$LINK/lib${l%%:*}.so"
done
ln -sf "$SP/nvidia/cudnn/lib/libcudnn.so.9" "$LINK/libcudnn.so"
CUDARC_SRC=$(cargo metadata -q --format-version 1 --features cuda | "$PY" -c '
import json,sys,os; m=json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="cudarc"))')
grep -ohE "pub unsafe fn cu[A-Za-z0-9_]+" "$CUDARC_SRC/src/driver/sys/mod.rs" | awk '{print $4}' | sort -u \
  | awk '{print "int " $1 "(void){return 999;}"}' > "$LINK/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/libcuda_stub.c"

# ---- 3. build -------------------------------------------------------------------------------
export PATH="$CUDA_HOME/bin:$PATH"   # cudarc's build.rs and candle-kernels both look for nvcc on PATH
export CUDA_COMPUTE_CAP=90           # no nvidia-smi here; 90 -> sm_90a (H100/H200)
export LIBRARY_PATH="$LINK"
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
export CARGO_TARGET_DIR="$REPO/target/cuda"
# Our kernels are compiled by NVRTC when first used on a GPU; a syntax error must not wait for one.
for cu in src/nn/kernels/*.cu; do
  "$CUDA_HOME/bin/nvcc" --ptx -arch=sm_90 -o /dev/null "$cu"
  echo "kernels ok: $cu"
done
time cargo build --release --features cuda --bin runner
# The cfg(feature = "cuda") code is linted here (the CPU build's clippy never sees it); the
# release profile shares the build scripts' output (candle-kernels' PTX) with the build above.
cargo clippy --release --features cuda --all-targets -- -D warnings

# ---- 4. inspect and package -----------------------------------------------------------------
BIN="$CARGO_TARGET_DIR/release/runner"
readelf -d "$BIN" | grep NEEDED
mkdir -p "$REPO/dist"
cp "$BIN" "$REPO/dist/runner-cuda"
strip "$REPO/dist/runner-cuda"
ls -la "$REPO/dist/runner-cuda"
# Without a GPU the binary must still start: with the stub as libcuda.so.1 it loads its
# libraries (a missing one fails here) and answers --version.
mkdir -p "$TOOLS/stub-run"
ln -sf "$LINK/libcuda.so" "$TOOLS/stub-run/libcuda.so.1"
LD_LIBRARY_PATH="$CUDA_HOME/lib:$SP/nvidia/cudnn/lib:$TOOLS/stub-run" "$REPO/dist/runner-cuda" --version
echo "built dist/runner-cuda"
