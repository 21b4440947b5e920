#!/usr/bin/env bash
# Captures the trace corpus (scripts/corpus/models.py): one CPU training run per row under
# `python -m timeshare.capture`, 4-6 marked iterations each, gzip snapshots in OUT.
#
# Usage: scripts/corpus/capture.sh [ROW...]      (default: every row)
#   VENV=path    capture venv (default .venv-corpus/, made by scripts/corpus/setup.sh)
#   OUT=dir      where the .pkl.gz go (default out/corpus/, git-ignored)
#   THREADS=n    torch intra-op threads (default 1)
# Rows already captured are skipped unless FORCE=1. Run time: see docs/traces.md.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${VENV:-$repo/.venv-corpus}"
out="${OUT:-$repo/out/corpus}"
threads="${THREADS:-1}"
[[ -x "$venv/bin/python" ]] || bash "$repo/scripts/corpus/setup.sh"
mkdir -p "$out"
if [[ $# -eq 0 ]]; then
  set -- $("$venv/bin/python" -c "import sys; sys.path.insert(0, '$repo/scripts/corpus'); import models; print(' '.join(r.name for r in models.ROWS))")
fi
# The capture module without the compiled part of the package (as scripts/make_traces.sh).
shim="$(mktemp -d)"
trap 'rm -rf "$shim"' EXIT
mkdir -p "$shim/timeshare"
: > "$shim/timeshare/__init__.py"
cp "$repo/python/timeshare/capture.py" "$repo/python/timeshare/snapshot.py" "$shim/timeshare/"
all_start=$(date +%s)
for row in "$@"; do
  dest="$out/$row.pkl.gz"
  if [[ -f "$dest" && "${FORCE:-0}" != 1 ]]; then echo "== $row (kept)"; continue; fi
  start=$(date +%s)
  OMP_NUM_THREADS="$threads" PYTHONPATH="$shim" PYTHONHASHSEED=0 HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 "$venv/bin/python" -m timeshare.capture --device cpu --model "$row" \
    --out "$dest" -- "$repo/scripts/corpus/train.py" "$row" > "$out/$row.log" 2>&1 \
    || { echo "== $row FAILED (see $out/$row.log)"; continue; }
  echo "== $row $(( $(date +%s) - start )) s $(du -h "$dest" | cut -f1) $(tail -1 "$out/$row.log")"
done
echo "corpus: $(( $(date +%s) - all_start )) s in all"
