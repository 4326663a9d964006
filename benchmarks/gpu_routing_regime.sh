#!/bin/bash
# Uneven expert groups on one GPU, priced by a full profile (operator tables included) of
# the same GPU, each case measured from the same clock state: profile Mixtral-8x7B's shape on
# this H200 (no host steps), then benchmarks/routing_groups.py on the shipped trace's uneven
# groups with all 8 experts local (EP 1) and on one rank's 2 experts of EP 4, first back to
# back (--cool-s 0) and then with the GPU idle 0.5 s before each case. nvidia-smi dmon logs
# power, clocks and temperature every second (dmon.txt). One H200, about 6 minutes:
#
#   OUT=/tmp/r bash benchmarks/gpu_routing_regime.sh
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv,noheader
nvidia-smi dmon -s pcu -d 1 -o T > "$OUT/dmon.txt" 2>&1 &
DMON=$!
t0=$(date +%s)
timeout 300 torchrun --nproc_per_node=1 -m moesched profile --out "$OUT/h200x1-mixtral.json" \
  --models Mixtral-8x7B --host-steps 0 > "$OUT/log-profile.txt" 2>&1
tail -1 "$OUT/log-profile.txt"; echo "profile done at +$(( $(date +%s) - t0 )) s"
for cool in 0 0.5; do
  for ep in 1 4; do
    mkdir -p "$OUT/cool$cool/ep$ep"
    echo "cool $cool ep $ep at +$(( $(date +%s) - t0 )) s"
    timeout 150 python benchmarks/routing_groups.py --device cuda --trace routing/bytelm-L4-E8-top2.jsonl \
      --model Mixtral-8x7B --ep $ep --profile "$OUT/h200x1-mixtral.json" --samples 8 --reps 10 \
      --cool-s $cool --out "$OUT/cool$cool/ep$ep" | tail -1
  done
done
kill $DMON
