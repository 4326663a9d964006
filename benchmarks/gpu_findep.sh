#!/usr/bin/env bash
# The DEP forward tasks (attention, shared expert, experts of executor/dep.py) on one GPU
# (nvidia-h200) against the h200x4-nvlink profile's prices (benchmarks/gpu_findep.py).
# About 1-2 minutes on one H200. Run from the repository root; writes only under OUT:
#
#   OUT=/tmp/out bash benchmarks/gpu_findep.sh
set -o pipefail
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT/findep"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/findep/gpu.txt" 2>&1
timeout 300 python benchmarks/gpu_findep.py --out "$OUT/findep" "$@" 2>&1 | tee "$OUT/findep/log.txt"
