#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, -fsanitize=fuzzer,address,undefined) and runs each for a
# set time on its seed corpus, then the Python snapshot fuzzer (atheris).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      default 300
#   FUZZ_TARGETS="conf tsev snapshot"         which to run (default all three)
#
# Build outputs: build-rel-fuzz/. Working corpora grow in build-rel-fuzz/corpus-<target>/ (seeded
# from fuzz/corpus/<target>/, which stays small and is never written); crashes land in
# build-rel-fuzz/artifacts/. Exits non-zero when a target finds a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER=${1:-300}
TARGETS=${FUZZ_TARGETS:-"conf tsev snapshot"}
CXX=${FUZZ_CXX:-clang++}
OUT=build-rel-fuzz
mkdir -p "$OUT/artifacts"
FLAGS=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -Icsrc)

build() {  # $1 = target name, rest = core sources it needs
  local name=$1; shift
  echo "== fuzz: build fuzz_$name =="
  "$CXX" "${FLAGS[@]}" "fuzz/fuzz_$name.cpp" "$@" -o "$OUT/fuzz_$name"
}

status=0
for t in $TARGETS; do
  case $t in
    conf) build conf csrc/timeshare/common/options.cpp ;;
    tsev) build tsev csrc/timeshare/trace/events.cpp ;;
    snapshot) ;;
    *) echo "unknown fuzz target $t (conf, tsev, snapshot)" >&2; exit 2 ;;
  esac
done
for t in $TARGETS; do
  echo "== fuzz: $t for $SECONDS_PER s =="
  corpus="$OUT/corpus-$t"
  mkdir -p "$corpus"
  start=$SECONDS
  if [[ $t == snapshot ]]; then
    ${PYTHON:-python3} scripts/fuzz_snapshot.py --seconds "$SECONDS_PER" --corpus fuzz/corpus/snapshot \
      --artifacts "$OUT/artifacts" || status=1
    [[ ! -s "$OUT/artifacts/snapshot-findings.txt" ]] || { cat "$OUT/artifacts/snapshot-findings.txt"; status=1; }
  else
    # -rss_limit_mb / -malloc_limit_mb: an input that makes the reader ask for gigabytes is a bug.
    ASAN_OPTIONS="allocator_may_return_null=0:detect_leaks=1" \
    "$OUT/fuzz_$t" "$corpus" "fuzz/corpus/$t" -max_total_time="$SECONDS_PER" \
      -rss_limit_mb=2048 -malloc_limit_mb=64 -timeout=10 -max_len=4096 -print_final_stats=1 \
      -artifact_prefix="$OUT/artifacts/$t-" 2>&1 | tail -25 || status=1
  fi
  echo "== fuzz: $t ran $((SECONDS - start)) s =="
done
ls -l "$OUT/artifacts"
exit $status
