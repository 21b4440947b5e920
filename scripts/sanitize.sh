#!/usr/bin/env bash
# Sanitizer builds of the C++ suite: ASan+UBSan (LeakSanitizer on, as ASan's default) and,
# separately, ThreadSanitizer. Fails on any report (every sanitizer is set to halt on error).
#
#   scripts/sanitize.sh            both
#   scripts/sanitize.sh address    ASan+UBSan only
#   scripts/sanitize.sh thread     TSan only
#
# Build dirs: build-rel-asan/, build-rel-tsan/ (RelWithDebInfo, no Python; the CUDA backend and its driver double where the toolkit is found); with
# SAN_QUICK=1 build-ci-asan/, build-ci-tsan/.
# Env: JOBS (default 1), TSAN_FILTER (Catch2 test spec for the TSan run; default skips [bench],
# which is hidden anyway, and nothing else), ASAN_FILTER likewise.
#   SAN_QUICK=1   what CI runs (scripts/test.sh): -O1 -g1 (faster to build, line numbers kept),
#                 the whole Catch2 suite, the stress tool at a tenth of the operations.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-1}
WHICH=${1:-all}
QUICK=${SAN_QUICK:-0}
OPT_FLAGS=()
ASAN_OPS=200000
TSAN_OPS=50000
ASAN_DIR=build-rel-asan
TSAN_DIR=build-rel-tsan
if [[ $QUICK == 1 ]]; then
  ASAN_DIR=build-ci-asan
  TSAN_DIR=build-ci-tsan
  OPT_FLAGS=(-DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1")
  ASAN_OPS=20000
  TSAN_OPS=5000
fi
ASAN_FILTER=${ASAN_FILTER:-"~[bench]"}
TSAN_FILTER=${TSAN_FILTER:-"~[bench]"}

build() {  # $1 = sanitizer, $2 = build dir
  echo "== $1: configure and build ($2) =="
  local start=$SECONDS
  cmake -S . -B "$2" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTIMESHARE_SANITIZE="$1" \
    -DTIMESHARE_BUILD_PYTHON=OFF -DTIMESHARE_CUDA=AUTO -DTIMESHARE_BUILD_TOOLS=ON \
    "${OPT_FLAGS[@]}" >/dev/null
  cmake --build "$2" -j"$JOBS" --target timeshare_tests stress 2>&1 | grep -E "error|warning:" || true
  cmake --build "$2" -j"$JOBS" --target timeshare_tests stress >/dev/null  # fails on an error
  echo "== $1: built in $((SECONDS - start)) s =="
}

run_suite() {  # $1 = label, $2 = build dir, $3 = test spec
  echo "== $1: Catch2 suite ($3) =="
  local start=$SECONDS
  "$2/timeshare_tests" --order rand --rng-seed 1 "$3"
  echo "== $1: suite passed in $((SECONDS - start)) s =="
}

if [[ $WHICH == all || $WHICH == address ]]; then
  build address "$ASAN_DIR"
  export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
  export LSAN_OPTIONS="report_objects=1"
  run_suite "asan+ubsan" "$ASAN_DIR" "$ASAN_FILTER"
  echo "== asan+ubsan: stress tool, both policies =="
  for p in torch timeshare torch-expandable; do
    "$ASAN_DIR"/stress --ops "$ASAN_OPS" --threads 4 --seed 11 --policy "$p"
  done
  unset ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS
fi

if [[ $WHICH == all || $WHICH == thread ]]; then
  build thread "$TSAN_DIR"
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:history_size=4"
  run_suite "tsan" "$TSAN_DIR" "$TSAN_FILTER"
  echo "== tsan: stress tool, both policies =="
  for p in torch timeshare torch-expandable; do
    "$TSAN_DIR"/stress --ops "$TSAN_OPS" --threads 4 --seed 12 --policy "$p"
  done
  unset TSAN_OPTIONS
fi
echo "== sanitizers: no reports =="
