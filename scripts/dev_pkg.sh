#!/usr/bin/env bash
# A private copy of the package for development, without touching the installed one:
#   bash scripts/dev_pkg.sh BUILD_DIR OUT_DIR   (defaults: build-py, /tmp/tspkg)
# builds the Python module in BUILD_DIR and assembles OUT_DIR/timeshare (the Python sources,
# _C, libtimeshare.so and the installed package's OOM shim); then
#   PYTHONPATH=OUT_DIR python -m pytest tests/python/...
# runs against it. Several people (or agents) working in one tree each use their own dirs.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-py}
OUT=${2:-/tmp/tspkg}
PY=${PYTHON:-python3}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DTIMESHARE_BUILD_TESTS=OFF \
  -DTIMESHARE_BUILD_TOOLS=OFF -DTIMESHARE_BUILD_PYTHON=ON >/dev/null
cmake --build "$BUILD" -j"${JOBS:-2}" --target _C timeshare >/dev/null
mkdir -p "$OUT/timeshare"
cp -r python/timeshare/. "$OUT/timeshare/"
cp "$BUILD"/_C*.so "$BUILD"/libtimeshare.so "$OUT/timeshare/"
# The installed package's torch-built libraries: the OOM shim and the native route's layers
# (rebuilt only by pip install; they link the libtimeshare.so beside them).
INSTALLED=$($PY -I -c "import os,timeshare;print(os.path.dirname(timeshare.__file__))" 2>/dev/null || true)
if [[ -n $INSTALLED ]]; then
  for lib in "$INSTALLED"/libtimeshare_torch_oom.so "$INSTALLED"/libtimeshare_native-*.so; do
    [[ -f $lib ]] && cp "$lib" "$OUT/timeshare/"
  done
fi
# The native layer links libtimeshare.so's classes (Options, the pools): one built against
# other headers crashes (a new Options field did, in the .venv-cuda tests). A layer built from
# this tree (NATIVE_FROM: a C++ build dir configured with TIMESHARE_NATIVE_TORCH; default build)
# replaces the installed one when it is newer.
for lib in "${NATIVE_FROM:-build}"/libtimeshare_native-*.so; do
  installed="$INSTALLED/$(basename "$lib")"
  if [[ -f $lib && ( -z $INSTALLED || ! -f $installed || $lib -nt $installed ) ]]; then
    dest="$OUT/timeshare/$(basename "$lib")"
    cp "$lib" "$dest"
    echo "dev_pkg: native layer from $lib" >&2
  fi
done
echo "$OUT"
