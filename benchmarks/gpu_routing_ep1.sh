#!/bin/bash
# Uneven expert groups on one GPU, priced by a profile of the same GPU: profile Mixtral-8x7B's
# shape on this H200 (per-shape curves, quick grids, no host steps), then time the expert
# forward task on the uneven groups of the shipped trace with all 8 experts local (EP 1) and,
# for comparison, on the 2 experts of one rank of EP 4 (benchmarks/routing_groups.py). One
# H200, about 5 minutes. Run from the repository root:
#
#   OUT=/tmp/r bash benchmarks/gpu_routing_ep1.sh
#
# Writes $OUT/h200x1-mixtral.json (the profile), $OUT/ep1/ and $OUT/ep4/routing_groups.jsonl.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
mkdir -p "$OUT/ep1" "$OUT/ep4"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 330 torchrun --nproc_per_node=1 -m moesched profile --out "$OUT/h200x1-mixtral.json" \
  --models Mixtral-8x7B --quick --host-steps 0 2>&1 | tail -5
for ep in 1 4; do
  timeout 100 python benchmarks/routing_groups.py --device cuda --trace routing/bytelm-L4-E8-top2.jsonl \
    --model Mixtral-8x7B --ep $ep --profile "$OUT/h200x1-mixtral.json" --samples 8 --reps 10 \
    --out "$OUT/ep$ep" | tail -1
done
