#!/usr/bin/env bash
# On a CUDA machine (one H100/H200 is enough), in one prepared run of under 8 minutes: build and
# install timeshare, then train a CNN and a transformer for a few real steps with PyTorch's
# default allocator, with torch's save_on_cpu, with timeshare, and with timeshare under a budget
# of 60% of the default peak (spilling saved activations to pinned host memory), each run in its
# own process (the allocator swap must precede CUDA initialisation), and print one table: step
# time, peak memory, bytes spilled, losses (identical to the default's, or the first step that
# differs), whether torch.cuda.memory_stats() under timeshare is non-zero and follows a probe
# tensor exactly, and any CUDA error with its message (a sticky one ends the run). Each step
# uploads its batch on a side stream and hands it over with wait_stream + record_stream. Then
# scripts/gpu_torch_features.py checks torch.cuda's memory features on the native route
# (cudnn.benchmark, a CUDA graph, torch.compile(mode="reduce-overhead"), memory_viz).
# Only plain device allocations are used (cuMemAlloc / cuMemCreate); never managed memory.
#
#   scripts/gpu_check.sh                  # exit 0: every check held
#   STEPS=20 OUT=/tmp/gpu scripts/gpu_check.sh
#   SKIP_BUILD=1 scripts/gpu_check.sh     # timeshare already installed in this Python
#
# Machines that cannot reach Debian's archive: carry the .deb files of libspdlog-dev,
# libfmt-dev (and their runtime packages) in .debs/ (apt-get download ...); they are unpacked
# into /tmp/timeshare-deps and found from there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export CUBLAS_WORKSPACE_CONFIG=:4096:8
STEPS=${STEPS:-12}
TOTAL_S=${TOTAL_S:-450}  # the whole script, build included: under 8 minutes with margin
OUT=${OUT:-$(mktemp -d)}
t0=$(date +%s)

$PY -c "import torch; assert torch.cuda.is_available(), 'no GPU visible to torch'; print('[gpu_check]', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  if [ ! -e /usr/include/spdlog/spdlog.h ] && [ -d .debs ]; then
    mkdir -p /tmp/timeshare-deps
    for f in .debs/*.deb; do dpkg -x "$f" /tmp/timeshare-deps; done
    export CMAKE_PREFIX_PATH=/tmp/timeshare-deps/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
    export CPATH=/tmp/timeshare-deps/usr/include${CPATH:+:$CPATH}
  fi
  echo "[gpu_check] building and installing timeshare (CMAKE_BUILD_PARALLEL_LEVEL=$CMAKE_BUILD_PARALLEL_LEVEL)"
  TIMESHARE_CUDA=ON $PY -m pip install -q --no-build-isolation --no-deps . 2>&1 | grep -v "^WARNING" || true
fi
$PY -c "import timeshare, timeshare._C as c; print('[gpu_check] timeshare', timeshare.__version__ if hasattr(timeshare, '__version__') else '', 'from', timeshare.__file__)"
left=$((TOTAL_S - ($(date +%s) - t0)))
echo "[gpu_check] build done after $(( $(date +%s) - t0 )) s; runs get ${left} s; results in $OUT"
status=0
$PY scripts/gpu_train_check.py --all --out "$OUT" --steps "$STEPS" --deadline-s "$((left - 130))" || status=$?
# torch.cuda's memory features on the native route (cudnn.benchmark, CUDA graphs,
# torch.compile(mode="reduce-overhead"), memory history and memory_viz, memory_stats).
left=$((TOTAL_S - ($(date +%s) - t0)))
timeout "$((left > 20 ? left - 10 : 10))" $PY scripts/gpu_torch_features.py || status=$?
echo "[gpu_check] total $(( $(date +%s) - t0 )) s, exit $status"
exit $status
