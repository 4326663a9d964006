#!/usr/bin/env bash
# Predicted and measured Chrome traces of every schedule on one GPU (nvidia-h200): profile the
# four shapes of results/h200x1/configs-1gpu.json, then validate them and the held-out set with
# --traces (one repeat), so that per-task measured times can be set against the model's.
#
#   OUT=DIR bash benchmarks/gpu_traces_validate.sh      # writes OUT/traces-validate.tgz
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
W=$(mktemp -d)/traces-validate; mkdir -p $W/traces
F="grep --line-buffered -v -e ^W1 -e OMP_NUM -e ^\*\*\* -e profile: -e UserWarning -e run_backward"
nvidia-smi --query-gpu=name,uuid,driver_version,power.limit --format=csv > $W/gpu.csv
P=$W/h200x1-one-gpu.json
S=$SECONDS; timeout 220 torchrun --nproc_per_node=1 -m moesched profile --out $P \
  --models results/h200x1/configs-1gpu.json 2>&1 | $F > $W/log-profile.txt; echo "profile $((SECONDS-S)) s" | tee -a $W/log-profile.txt
for set in profiled heldout; do
  CFG=results/h200x1/configs-1gpu.json; [ $set = heldout ] && CFG=benchmarks/heldout-shapes.json
  S=$SECONDS; timeout 150 torchrun --nproc_per_node=1 -m moesched validate --profile $P --configs $CFG \
    --out $W/validation-$set.csv --steps 5 --warmup 2 --regime one-gpu --traces $W/traces/$set 2>&1 | $F > $W/log-$set.txt
  echo "$set $((SECONDS-S)) s"; grep "step time error" $W/log-$set.txt
done
tar -C $(dirname $W) -czf $OUT/traces-validate.tgz $(basename $W); ls -la $OUT
