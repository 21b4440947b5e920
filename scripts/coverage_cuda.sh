#!/usr/bin/env bash
# Line coverage of the CUDA backend (csrc/timeshare/device/cuda/*.cpp) by the project's own C++
# tests, with no GPU: builds with gcc --coverage into build-coverage-cuda/, runs the CUDA tests
# of timeshare_tests (the conformance suite and tests/cpp/test_cuda_backend.cpp, over the driver
# test double in tests/cuda_double/) and prints gcov's line figure for each file.
#   scripts/coverage_cuda.sh            # CUDA tests only ([cuda] and [conformance])
#   ALL=1 scripts/coverage_cuda.sh      # the whole suite, as ctest runs it
# Needs the CUDA Toolkit headers (the backend is compiled only where they are found).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-coverage-cuda}
JOBS=${JOBS:-2}

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Debug -DTIMESHARE_BUILD_PYTHON=OFF \
  -DTIMESHARE_BUILD_TOOLS=OFF -DTIMESHARE_CUDA=ON \
  -DCMAKE_CXX_FLAGS="--coverage -O0" -DCMAKE_EXE_LINKER_FLAGS="--coverage" \
  -DCMAKE_SHARED_LINKER_FLAGS="--coverage" >/dev/null
cmake --build "$BUILD" -j"$JOBS" --target timeshare_tests >/dev/null
obj="$BUILD/CMakeFiles/timeshare_core.dir/csrc/timeshare/device/cuda"
find "$obj" -name '*.gcda' -delete
if [[ ${ALL:-0} == 1 ]]; then
  (cd "$BUILD" && ctest --output-on-failure)
else
  "$BUILD/timeshare_tests" "[cuda],[conformance]" 2>/dev/null | tail -2
fi
echo "== line coverage of csrc/timeshare/device/cuda/*.cpp =="
for src in csrc/timeshare/device/cuda/*.cpp; do
  name=$(basename "$src")
  (cd "$obj" && gcov -n -o . "$name.o" 2>/dev/null) |
    awk -v f="$name" '$0 ~ "^File .*" f "'"'"'" {hit=1; next} hit && /^Lines executed/ {print f ": " $0; hit=0}'
done
