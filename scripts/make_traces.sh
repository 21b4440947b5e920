#!/usr/bin/env bash
# Regenerates the real allocation traces shipped in python/timeshare/traces/.
#
# Each model script in scripts/trace_models/ is an ordinary CPU training script (random init,
# a few iterations of forward, backward, optimizer step). It runs under
# `python -m timeshare.capture`, which records every CPU tensor allocation and free in
# PyTorch's memory-snapshot schema and writes a gzip pickle. See docs/traces.md.
#
# Usage: scripts/make_traces.sh [MODEL...]     (default: every scripts/trace_models/*.py)
#   VENV=path       virtualenv to create/use (default: .venv-traces/ in the repo, git-ignored)
#   OUT=dir         where the .pkl.gz files go (default: python/timeshare/traces)
#   THREADS=n       torch intra-op threads (default 2)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv-traces}"
out="${OUT:-$repo/python/timeshare/traces}"
threads="${THREADS:-2}"
python_bin="${PYTHON:-python3.11}"

# Pinned versions: torch 2.14.1 + torchvision 0.29.1 are a matching pair (torchvision from
# PyPI does not load against a torch CPU-only build of another minor version).
readonly TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
readonly EXTRA_PINS=(timm==1.0.31 transformers==5.24.0 numpy)

if [[ ! -x "$venv/bin/python" ]]; then
  "$python_bin" -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch, torchvision, timm, transformers" 2>/dev/null; then
  "$venv/bin/pip" install --quiet "${TORCH_PINS[@]}" "${EXTRA_PINS[@]}"
fi
if [[ "${SETUP_ONLY:-0}" == 1 ]]; then
  exit 0
fi

mkdir -p "$out"
if [[ $# -eq 0 ]]; then
  set -- $(cd "$repo/scripts/trace_models" && ls *.py | sed 's/\.py$//')
fi

# The capture and snapshot modules do not need the compiled part of the package: run them
# from a private copy of just those two files, so a missing timeshare._C cannot stop a capture.
shim="$(mktemp -d)"
trap 'rm -rf "$shim"' EXIT
mkdir -p "$shim/timeshare"
: > "$shim/timeshare/__init__.py"
cp "$repo/python/timeshare/capture.py" "$repo/python/timeshare/snapshot.py" "$shim/timeshare/"

for model in "$@"; do
  script="$repo/scripts/trace_models/$model.py"
  echo "== $model"
  start=$(date +%s)
  OMP_NUM_THREADS="$threads" PYTHONPATH="$shim" PYTHONHASHSEED=0 \
    "$venv/bin/python" -m timeshare.capture --model "$model" --out "$out/$model.pkl.gz" \
    -- "$script"
  echo "   $(( $(date +%s) - start )) s, $(du -h "$out/$model.pkl.gz" | cut -f1)"
done
