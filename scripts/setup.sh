#!/usr/bin/env bash
# Installs everything timeshare needs on a fresh Debian machine, then builds and installs it.
#   bash scripts/setup.sh            # system packages, Python deps, torch (CPU), timeshare itself
#   SKIP_CUDA_VENV=1 bash ...        # skip the CUDA-build torch venv used by registration tests
# Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}

need_apt=()
dpkg -s libspdlog-dev >/dev/null 2>&1 || need_apt+=(libspdlog-dev)
dpkg -s libfmt-dev >/dev/null 2>&1 || need_apt+=(libfmt-dev)
dpkg -s catch2 >/dev/null 2>&1 || need_apt+=(catch2)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v make >/dev/null 2>&1 || need_apt+=(make)
if ((${#need_apt[@]})); then
  echo "[setup] apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ -x /usr/local/cuda/bin/nvcc ] || command -v nvcc >/dev/null 2>&1; then
  echo "[setup] CUDA Toolkit found: the CUDA backend will be built"
else
  echo "[setup] no CUDA Toolkit: building without the CUDA backend (sim backend only)"
fi

echo "[setup] Python packages"
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0" numpy rich matplotlib \
  pytest hypothesis "pybind11>=2.12" "cmake>=3.24" setuptools wheel ruff 2>&1 | grep -v "^WARNING" || true

if [ -z "${SKIP_CUDA_VENV:-}" ] && [ ! -x .venv-cuda/bin/python ]; then
  # PyTorch's CPU wheel has no pluggable-allocator support; a CUDA build (which runs without a
  # GPU) lets the tests exercise the registration path. 2.14.1 lies on this machine's disk.
  echo "[setup] .venv-cuda with a CUDA build of torch (registration tests)"
  $PY -m venv .venv-cuda
  .venv-cuda/bin/pip install -q --disable-pip-version-check "torch==2.14.1" numpy 2>&1 | grep -v "^WARNING" || true
fi

echo "[setup] building and installing timeshare"
# The native route is built against each CUDA build of torch present: the target's (none here:
# the CPU build) and the registration tests' virtualenv.
[ -x .venv-cuda/bin/python ] && export TIMESHARE_NATIVE_FOR="$PWD/.venv-cuda/bin/python"
$PY -m pip install -q --disable-pip-version-check --no-build-isolation . 2>&1 | grep -v "^WARNING" || true
$PY -c "import timeshare, timeshare._C; print('[setup] timeshare', timeshare.__version__, 'at', timeshare.library_path())"
