#!/bin/bash
# Uneven expert groups and imbalanced steps on one GPU, priced by a profile of the same GPU:
# profile Mixtral-8x7B's shape on this H200 (operator tables included, no host steps), then
# benchmarks/gpu_skew.sh with that profile (validate --skew 0 / 0.05 / 0.1, and
# routing_groups.py on the shipped trace's uneven groups, rested and back to back).
# One H200, about 4 minutes:
#
#   OUT=/tmp/r bash benchmarks/gpu_routing_regime.sh
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv,noheader
timeout 300 torchrun --nproc_per_node=1 -m moesched profile --out "$OUT/h200x1-mixtral.json" \
  --models Mixtral-8x7B --host-steps 0 > "$OUT/log-profile.txt" 2>&1
tail -1 "$OUT/log-profile.txt"
P="$OUT/h200x1-mixtral.json" OUT="$OUT" bash benchmarks/gpu_skew.sh
