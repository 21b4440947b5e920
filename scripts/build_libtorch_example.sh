#!/usr/bin/env bash
# Builds the LibTorch entry point (libtimeshare_libtorch.so) and examples/train_libtorch against a
# CUDA build of LibTorch, then runs a few training steps.
#
#   scripts/build_libtorch_example.sh            uses .venv-cuda/bin/python's torch
#   TORCH_PYTHON=/path/to/python scripts/...     another Python whose torch is a CUDA build
#
# Build dir: build-rel-libtorch/. Needs the CUDA toolkit (CUDAToolkit_ROOT or /usr/local/cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${TORCH_PYTHON:-.venv-cuda/bin/python}
JOBS=${JOBS:-1}
PREFIX=$("$PY" -c "import torch; print(torch.utils.cmake_prefix_path)")
ABI=$("$PY" -c "import torch; print(int(torch.compiled_with_cxx11_abi()))")
CUDA=${CUDAToolkit_ROOT:-/usr/local/cuda}
# The wheel's Caffe2 config looks for cudart and nvrtc through the legacy FindCUDA variables; the
# toolkit here has no nvrtc, the wheel's nvidia-* packages do.
NVRTC=$("$PY" -c "import glob, os, torch; d = os.path.dirname(os.path.dirname(torch.__file__)); \
print((sorted(glob.glob(d + '/nvidia/*/lib/libnvrtc.so*')) + sorted(glob.glob('$CUDA/lib*/libnvrtc.so*')) + [''])[0])")
echo "== LibTorch from $PREFIX (cxx11 abi $ABI), CUDA $CUDA, nvrtc ${NVRTC:-not found} =="
cmake -S examples -B build-rel-libtorch -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DCUDAToolkit_ROOT="$CUDA" -DCUDA_TOOLKIT_ROOT_DIR="$CUDA" -DCUDA_INCLUDE_DIRS="$CUDA/include" \
  -DCUDA_CUDART_LIBRARY="$(ls "$CUDA"/lib64/libcudart.so "$CUDA"/lib/libcudart.so 2>/dev/null | head -1)" \
  -DCUDA_nvrtc_LIBRARY="$NVRTC" -DCUDA_NVRTC_LIB="$NVRTC" -DTIMESHARE_CUDA=ON
cmake --build build-rel-libtorch -j"$JOBS" --target train_libtorch
echo "== run =="
build-rel-libtorch/train_libtorch 5
