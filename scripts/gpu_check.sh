#!/usr/bin/env bash
# On a CUDA machine: build timeshare, then train a small real model for a few steps with
# PyTorch's default allocator, with torch's save_on_cpu, with timeshare, and with timeshare under
# budgets of 70% and 50% of the default peak (spilling to pinned host memory), each in its own
# process (the allocator swap must precede CUDA initialisation), and print losses, peak memory
# and step time side by side.
# Losses must be identical (deterministic kernels, same seeds). Only plain device allocations are
# used (cuMemAlloc / cuMemCreate); never managed memory.
#
# Machines that cannot reach Debian's archive: carry the .deb files of libspdlog-dev,
# libfmt-dev (and their runtime packages) in .debs/ (apt-get download ...); they are unpacked
# into /tmp/timeshare-deps and found from there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-8}
STEPS=${STEPS:-20}

$PY -c "import torch; assert torch.cuda.is_available(), 'no GPU visible to torch'; print('[gpu_check]', torch.__version__, torch.cuda.get_device_name(0))"
if [ ! -e /usr/include/spdlog/spdlog.h ] && [ -d .debs ]; then
  mkdir -p /tmp/timeshare-deps
  for f in .debs/*.deb; do dpkg -x "$f" /tmp/timeshare-deps; done
  export CMAKE_PREFIX_PATH=/tmp/timeshare-deps/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
  export CPATH=/tmp/timeshare-deps/usr/include${CPATH:+:$CPATH}
fi
$PY -m pip install -q --no-build-isolation --no-deps . 2>&1 | grep -v "^WARNING" || true

OUT=${OUT:-$(mktemp -d)}
export CUBLAS_WORKSPACE_CONFIG=:4096:8
for mode in default save_on_cpu timeshare; do
  $PY scripts/gpu_train_check.py --mode "$mode" --steps "$STEPS" --json "$OUT/$mode.json"
done
# timeshare under two budgets: 70% and 50% of the default allocator's peak allocated bytes.
runs=("$OUT/default.json" "$OUT/save_on_cpu.json" "$OUT/timeshare.json")
for share in 70 50; do
  budget=$($PY -c "import json,sys; print(int(json.load(open(sys.argv[1]))['peak_allocated_bytes'] * $share / 100))" "$OUT/default.json")
  $PY scripts/gpu_train_check.py --mode timeshare --conf "budget:$budget,spill:host" \
    --label "timeshare-budget-$share%" --steps "$STEPS" --json "$OUT/ts$share.json"
  runs+=("$OUT/ts$share.json")
done
$PY scripts/gpu_train_check.py --compare "${runs[@]}"
