#!/usr/bin/env bash
# Held-out shapes on one GPU (nvidia-h200) with interleaved repeats, to tell the model from
# run-to-run noise (benchmarks/noise_floor.py). Two phases, each within one device call:
#
#   OUT=DIR PHASE=heldout bash benchmarks/gpu_heldout_repeats.sh   # profile + held-out, 3 repeats
#   OUT=DIR PHASE=profiled P=PROFILE bash benchmarks/gpu_heldout_repeats.sh   # profiled shapes, same GPU
#
# Writes OUT/heldout-rep.tgz (profile, CSV, logs, GPU identity) or OUT/profiled-rep.tgz.
# CONFIGS (default results/h200x1/configs-1gpu-dtypes.json: four bf16 shapes and one fp32)
# names the profiled shapes. STEPS and WARMUP (default 5 and 2) set validate's timed and untimed steps per repeat; PIN
# (e.g. PIN=2,3) runs the profiler and validate pinned to those cores (taskset), with as
# many solver workers (benchmarks/gpu_noise_protocol.sh measures what both change).
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}; PHASE=${PHASE:-heldout}; REPEATS=${REPEATS:-3}; STEPS=${STEPS:-5}; WARMUP=${WARMUP:-2}
CONFIGS=${CONFIGS:-results/h200x1/configs-1gpu-dtypes.json}
if [ -n "$PIN" ]; then ON="taskset -c $PIN"; WORKERS=$(echo "$PIN" | tr ',' '\n' | wc -l); else ON=env; WORKERS=16; fi
W=$(mktemp -d)/$PHASE-rep; mkdir -p $W
F="grep --line-buffered -v -e ^W1 -e OMP_NUM -e ^\*\*\* -e profile: -e UserWarning -e run_backward"
nvidia-smi --query-gpu=name,uuid,driver_version,power.limit --format=csv > $W/gpu.csv
echo "STEPS=$STEPS WARMUP=$WARMUP REPEATS=$REPEATS PIN=$PIN CONFIGS=$CONFIGS" > $W/protocol.txt
if [ "$PHASE" = heldout ]; then
  P=$W/h200x1-one-gpu.json
  S=$SECONDS; timeout 280 $ON torchrun --nproc_per_node=1 -m moesched profile --out $P \
    --models $CONFIGS 2>&1 | $F > $W/log-profile.txt; echo "profile $((SECONDS-S)) s" | tee -a $W/log-profile.txt; tail -3 $W/log-profile.txt
  CFG=benchmarks/heldout-shapes.json
else
  P=${P:?set P}; cp $P $W/h200x1-one-gpu.json
  CFG=$CONFIGS
fi
S=$SECONDS; timeout 420 $ON torchrun --nproc_per_node=1 -m moesched validate --profile $P --configs $CFG \
  --out $W/validation-one-gpu.csv --steps $STEPS --warmup $WARMUP --regime one-gpu --repeats $REPEATS --workers $WORKERS 2>&1 | $F > $W/log-validate.txt; echo "validate $((SECONDS-S)) s" >> $W/log-validate.txt
tail -14 $W/log-validate.txt
tar -C $(dirname $W) -czf $OUT/$PHASE-rep.tgz $(basename $W)
