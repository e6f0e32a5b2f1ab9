# Sourced by the GPU scripts (gpu-check.sh, bench/compare-gpu.sh) with BIN set to the cuda
# binary: puts the directories holding its CUDA 13 libraries (libcublas.so.13, libnvrtc.so.13,
# libcudnn.so.9, ...) on LD_LIBRARY_PATH. They are looked for in a CUDA 13 toolkit and in the pip
# wheels of python3's PyTorch (cu130: nvidia/cu13/lib, nvidia/cudnn/lib, ...); CUDA_LIBS=DIR adds
# a directory of your own, and BIN's folder's cuda-libs/ holds any carried .so files.
dirs=()
[ -n "${CUDA_LIBS:-}" ] && dirs+=("$CUDA_LIBS")
for d in "${CUDA_HOME:-/nonexistent}"/lib64 "${CUDA_HOME:-/nonexistent}"/lib /usr/local/cuda/lib64 \
         /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/targets/x86_64-linux/lib; do
  [ -e "$d/libcublas.so.13" ] && dirs+=("$d")
done
for py in python3 python; do
  command -v "$py" >/dev/null || continue
  while read -r d; do [ -d "$d" ] && dirs+=("$d"); done < <("$py" - <<'PY' 2>/dev/null
import os
try:
    import nvidia
    for p in nvidia.__path__:
        for sub in ("cu13/lib", "cublas/lib", "cuda_nvrtc/lib", "cuda_runtime/lib", "curand/lib", "cudnn/lib"):
            print(os.path.join(p, sub))
except Exception: pass
PY
)
done
LD=$(printf '%s\n' "${dirs[@]}" "$(cd "$(dirname "$BIN")" && pwd)/cuda-libs" | awk 'NF && !seen[$0]++' | paste -sd:)
export LD_LIBRARY_PATH="${LD}:${LD_LIBRARY_PATH:-}"   # dist/cuda-libs/: optional carried .so files
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

# cuda_libs_missing BINARY: lists the libraries the binary cannot find; true if there are any.
cuda_libs_missing() {
  ldd "$1" | grep 'not found'
}
