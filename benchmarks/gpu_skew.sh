#!/bin/bash
# Imbalanced training steps on one GPU, and uneven expert groups measured from a rested GPU.
# 1. moesched validate on a 2-layer Mixtral-8x7B with deepseek_v3 routing, its selection
#    bias skewed by --skew X (X = 0, 0.05, 0.1: executor/skewed.py), priced by the same-GPU
#    profile results/h200x1/routing-regime/h200x1-mixtral.json: even-routing error against
#    the error of the imbalanced steps, each replayed under its own per-expert load.
# 2. benchmarks/routing_groups.py on the shipped trace's uneven groups (EP 1 and EP 4),
#    the GPU idle 0.5 s before each case, and once back to back (EP 1).
# nvidia-smi dmon logs power, clocks and temperature (dmon.txt). One H200, about 5 minutes:
#
#   OUT=/tmp/r [P=PROFILE] bash benchmarks/gpu_skew.sh
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
P=${P:-results/h200x1/routing-regime/h200x1-mixtral.json}
nvidia-smi dmon -s pcu -d 1 -o T > "$OUT/dmon.txt" 2>&1 &
DMON=$!
for X in 0 0.05 0.1; do
  timeout 200 torchrun --nproc_per_node=1 -m moesched validate --profile $P \
    --configs results/h200x1/routing-regime/configs-skew.json --schedules vanilla,fsmoe --out "$OUT/skew.csv" \
    --steps 10 --warmup 3 --skew $X --workers 2 > "$OUT/log-skew$X.txt" 2>&1
  grep -E "validate |per-expert" "$OUT/log-skew$X.txt"
done
for run in "0.5 1" "0.5 4" "0 1"; do
  set -- $run
  mkdir -p "$OUT/cool$1-ep$2"
  timeout 150 python benchmarks/routing_groups.py --device cuda --trace routing/bytelm-L4-E8-top2.jsonl \
    --model Mixtral-8x7B --ep $2 --profile $P --samples 8 --reps 10 --cool-s $1 --out "$OUT/cool$1-ep$2" | tail -1
done
kill $DMON
