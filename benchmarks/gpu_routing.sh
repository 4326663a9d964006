#!/bin/bash
# Expert forward tasks on the uneven groups of the shipped routing trace, measured on one
# GPU and predicted by the shipped profile (benchmarks/routing_groups.py). One H200, about
# a minute. Run from the repository root:
#
#   OUT=/tmp/r bash benchmarks/gpu_routing.sh
#
# Writes $OUT/routing_groups.jsonl (one line per step and EP rank: groups, measured_us,
# even_split_us, predicted_us, error_pct; a summary line last) and prints the summary.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-results/h200x1/routing}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 220 python benchmarks/routing_groups.py --device cuda --trace routing/bytelm-L4-E8-top2.jsonl \
  --model Mixtral-8x7B --ep 4 --profile h200x4-nvlink --samples 4 --reps 10 --out "$OUT" | tail -3
