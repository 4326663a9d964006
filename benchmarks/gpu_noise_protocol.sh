#!/usr/bin/env bash
# How the measuring protocol moves the noise of host-bound plans on one GPU (nvidia-h200).
# The two most host-bound held-out shapes (gpt-top1, gpt-long), four schedules, four
# interleaved repeats, validated three ways with plans solved from a committed profile
# (predictions are not the point: the measured medians and their spread are):
#   short:  --steps 5 --warmup 2 (the protocol of results/h200x1/repeats)
#   long:   --steps 30 --warmup 10
#   pinned: long, with the job pinned to two cores (taskset -c 2,3)
#
#   OUT=DIR bash benchmarks/gpu_noise_protocol.sh      # writes OUT/noise.tgz
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}; W=$(mktemp -d)/noise; mkdir -p $W
P=results/h200x1/repeats/heldout-rep/h200x1-one-gpu.json.gz
python - <<'PY' > $W/configs.json
import json
print(json.dumps([c for c in json.load(open("benchmarks/heldout-shapes.json")) if c["name"] in ("gpt-top1", "gpt-long")]))
PY
nvidia-smi --query-gpu=name,uuid,driver_version,power.limit,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > $W/gpu.csv
lscpu > $W/lscpu.txt; nproc >> $W/lscpu.txt
run() {  # label, steps, warmup, prefix...
  local label=$1 steps=$2 warm=$3; shift 3
  local S=$SECONDS
  timeout 170 "$@" torchrun --nproc_per_node=1 -m moesched validate --profile $P --configs $W/configs.json \
    --schedules vanilla,tutel,schemoe,flowmoe --out $W/$label.csv --steps $steps --warmup $warm \
    --regime one-gpu --repeats 4 --workers 2 > $W/log-$label.txt 2>&1
  echo "$label rc=$? $((SECONDS-S)) s" | tee -a $W/times.txt
  nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> $W/gpu.csv
}
run short 5 2 env
run long 30 10 env
run pinned 30 10 taskset -c 2,3
tar -C $(dirname $W) -czf $OUT/noise.tgz noise
