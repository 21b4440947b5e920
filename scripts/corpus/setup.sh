#!/usr/bin/env bash
# Creates the capture virtualenv for the trace corpus (scripts/corpus/capture.sh).
#
# torch 2.14.1 + torchvision 0.29.1 are a matching pair (PyPI's torchvision does not import
# beside a torch of another minor version); timm and transformers ship the model code, built
# from configs in code: no weights are downloaded. The test suite does not use this venv.
#
# Usage: scripts/corpus/setup.sh        VENV=path (default .venv-corpus/, git-ignored)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${VENV:-$repo/.venv-corpus}"
python_bin="${PYTHON:-python3.11}"
readonly PINS=(torch==2.14.1 torchvision==0.29.1 timm==1.0.31 transformers==5.24.0 numpy)
if [[ ! -x "$venv/bin/python" ]]; then
  "$python_bin" -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch, torchvision, timm, transformers" 2>/dev/null; then
  "$venv/bin/pip" install --quiet "${PINS[@]}"
fi
"$venv/bin/python" -c "import torch, torchvision, timm, transformers; print('corpus venv:', torch.__version__, torchvision.__version__, timm.__version__, transformers.__version__)"
