#!/usr/bin/env bash
# Sanitizer builds of the C++ suite: ASan+UBSan (LeakSanitizer on, as ASan's default) and,
# separately, ThreadSanitizer. Fails on any report (every sanitizer is set to halt on error).
#
#   scripts/sanitize.sh            both
#   scripts/sanitize.sh address    ASan+UBSan only
#   scripts/sanitize.sh thread     TSan only
#
# Build dirs: build-rel-asan/, build-rel-tsan/ (RelWithDebInfo, no Python, no CUDA).
# Env: JOBS (default 1), TSAN_FILTER (Catch2 test spec for the TSan run; default skips [bench],
# which is hidden anyway, and nothing else), ASAN_FILTER likewise.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-1}
WHICH=${1:-all}
ASAN_FILTER=${ASAN_FILTER:-"~[bench]"}
TSAN_FILTER=${TSAN_FILTER:-"~[bench]"}

build() {  # $1 = sanitizer, $2 = build dir
  echo "== $1: configure and build ($2) =="
  cmake -S . -B "$2" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTIMESHARE_SANITIZE="$1" \
    -DTIMESHARE_BUILD_PYTHON=OFF -DTIMESHARE_CUDA=OFF -DTIMESHARE_BUILD_TOOLS=ON >/dev/null
  cmake --build "$2" -j"$JOBS" --target timeshare_tests stress
}

run_suite() {  # $1 = label, $2 = build dir, $3 = test spec
  echo "== $1: Catch2 suite ($3) =="
  local start=$SECONDS
  "$2/timeshare_tests" --order rand --rng-seed 1 "$3"
  echo "== $1: suite passed in $((SECONDS - start)) s =="
}

if [[ $WHICH == all || $WHICH == address ]]; then
  build address build-rel-asan
  export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
  export LSAN_OPTIONS="report_objects=1"
  run_suite "asan+ubsan" build-rel-asan "$ASAN_FILTER"
  echo "== asan+ubsan: stress tool, both policies =="
  for p in torch timeshare torch-expandable; do
    build-rel-asan/stress --ops 200000 --threads 4 --seed 11 --policy "$p"
  done
  unset ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS
fi

if [[ $WHICH == all || $WHICH == thread ]]; then
  build thread build-rel-tsan
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:history_size=4"
  run_suite "tsan" build-rel-tsan "$TSAN_FILTER"
  echo "== tsan: stress tool, both policies =="
  for p in torch timeshare torch-expandable; do
    build-rel-tsan/stress --ops 50000 --threads 4 --seed 12 --policy "$p"
  done
  unset TSAN_OPTIONS
fi
echo "== sanitizers: no reports =="
