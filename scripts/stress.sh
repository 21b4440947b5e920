#!/usr/bin/env bash
# The long stress run: >= 10 million operations of the whole Allocator on the backed sim device,
# over the three policies (torch, timeshare with the predictor, torch with expandable segments),
# 4 threads, seeded. Every step is checked (see csrc/tools/stress.cpp); exits 1 on a failure.
#
#   scripts/stress.sh [SEED]        env: OPS_TORCH, OPS_TIMESHARE, OPS_EXPANDABLE, THREADS, JOBS
#
# Figures (ops/s per policy, total time) are printed; docs/reliability.md quotes a run.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-1}
THREADS=${THREADS:-4}
JOBS=${JOBS:-1}
OPS_TORCH=${OPS_TORCH:-4000000}
OPS_TIMESHARE=${OPS_TIMESHARE:-3000000}
OPS_EXPANDABLE=${OPS_EXPANDABLE:-3000000}
BUILD=build-rel-stress

echo "== stress: build ($BUILD) =="
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DTIMESHARE_BUILD_PYTHON=OFF -DTIMESHARE_CUDA=OFF >/dev/null
cmake --build "$BUILD" -j"$JOBS" --target stress >/dev/null
start=$SECONDS
"$BUILD/stress" --ops "$OPS_TORCH" --threads "$THREADS" --seed "$SEED" --policy torch
"$BUILD/stress" --ops "$OPS_TIMESHARE" --threads "$THREADS" --seed "$SEED" --policy timeshare
"$BUILD/stress" --ops "$OPS_EXPANDABLE" --threads "$THREADS" --seed "$SEED" --policy torch-expandable
echo "== stress: $((OPS_TORCH + OPS_TIMESHARE + OPS_EXPANDABLE)) operations in $((SECONDS - start)) s, no failures =="
