#!/usr/bin/env bash
# The whole test suite: the C++ suite (Catch2, sim backend; plain, then under ASan+UBSan and
# TSan) and the Python suite (pytest).
# Run scripts/setup.sh first on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
JOBS=${JOBS:-2}

echo "== C++: configure and build (build/) =="
# The native route's C++ tests (tests/native/) build against the CUDA build of torch in
# .venv-cuda, where scripts/setup.sh made one.
NATIVE=""
if [ -x .venv-cuda/bin/python ]; then
  NATIVE=$(.venv-cuda/bin/python -I -c "import os,torch;print(os.path.dirname(torch.__file__)+'|'+torch.__version__+'|'+str(int(torch.compiled_with_cxx11_abi())))" 2>/dev/null || true)
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTIMESHARE_BUILD_PYTHON=OFF \
  -DTIMESHARE_NATIVE_TORCH="$NATIVE" >/dev/null
cmake --build build -j"$JOBS" 2>&1 | grep -E "error|warning:" || true
cmake --build build -j"$JOBS" >/dev/null  # fails the script on a build error
echo "== C++: Catch2 suite =="
(cd build && ctest --output-on-failure)


echo "== Python: pytest =="
$PY -m pytest -q tests/python

# The same suite under AddressSanitizer+UndefinedBehaviorSanitizer (with LeakSanitizer) and,
# separately, ThreadSanitizer: -O1 builds, the stress tool at a tenth of its long run.
# TIMESHARE_SANITIZERS=0 skips this (a quick local run); scripts/sanitize.sh alone is the long run.
if [[ ${TIMESHARE_SANITIZERS:-1} != 0 ]]; then
  echo "== C++: sanitizers =="
  SAN_QUICK=1 JOBS="$JOBS" bash scripts/sanitize.sh
fi
