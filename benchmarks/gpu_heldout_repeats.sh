#!/usr/bin/env bash
# Held-out shapes on one GPU (nvidia-h200) with interleaved repeats, to tell the model from
# run-to-run noise (benchmarks/noise_floor.py). Phases:
#
#   OUT=DIR PHASE=heldout bash benchmarks/gpu_heldout_repeats.sh   # profile + held-out shapes
#   OUT=DIR PHASE=profiled bash benchmarks/gpu_heldout_repeats.sh  # profile + profiled shapes
#   OUT=DIR PHASE=heldout P=PROFILE bash ...   # held-out shapes on a given profile (no profiling)
#   OUT=DIR PHASE=profiled P=PROFILE bash ...  # profiled shapes on a given profile, same GPU
#   OUT=DIR PHASE=both bash benchmarks/gpu_heldout_repeats.sh      # profile + both sets, one call
#   OUT=DIR PHASE=sets P=PROFILE bash benchmarks/gpu_heldout_repeats.sh   # both sets on a given profile
#
# Writes OUT/heldout-rep.tgz and/or OUT/profiled-rep.tgz (profile, CSV, logs, GPU identity)
# as each set ends, so a call cut short keeps the sets it finished. CONFIGS (default
# results/h200x1/configs-1gpu-dtypes.json: four bf16 shapes and one fp32) names the profiled
# shapes. REPEATS (default 3; PHASE=both: HREPEATS and PREPEATS, default 3 and 2), STEPS and
# WARMUP (default 5 and 2) set validate's repeats and timed and untimed steps per repeat; PIN
# (e.g. PIN=2,3) runs the profiler and validate pinned to those cores (taskset), with as
# many solver workers (benchmarks/gpu_noise_protocol.sh measures what both change).
# HOST_STEPS sets the profiler's --host-steps (its interleaved calibration passes; default
# the profiler's); TRACES=1 adds every plan's predicted and measured Chrome traces;
# PTIMEOUT and VTIMEOUT override the profile's and (PHASE=heldout or profiled) validate's
# time limits in seconds (default 330, and for validate what is left of a 590 s call; the
# profile took 237-255 s measuring with fp32 GEMM rows at half-octave steps, more with the
# widths at half-octave steps too).
# HELDOUT (default benchmarks/heldout-shapes.json) names the held-out shapes and HSET (default
# heldout) their set, e.g. HELDOUT=benchmarks/heldout-shapes-4x.json HSET=heldout4x.
# PHASE=both fits one 600 s device call with STEPS=15 WARMUP=3 (timeouts 300 s, 190 s and the
# rest, which may cut the profiled set short: PHASE=profiled, then PHASE=heldout with P set to
# the profile it returns, in a second call on the same machine, is safer).
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}; PHASE=${PHASE:-heldout}; REPEATS=${REPEATS:-3}; STEPS=${STEPS:-5}; WARMUP=${WARMUP:-2}
CONFIGS=${CONFIGS:-results/h200x1/configs-1gpu-dtypes.json}
HELDOUT=${HELDOUT:-benchmarks/heldout-shapes.json}; HSET=${HSET:-heldout}
if [ -n "$PIN" ]; then ON="taskset -c $PIN"; WORKERS=$(echo "$PIN" | tr ',' '\n' | wc -l); else ON=env; WORKERS=16; fi
BASE=$(mktemp -d)  # the sets are built here and packed into OUT as each ends
F="grep --line-buffered -v -e ^W1 -e OMP_NUM -e ^\*\*\* -e profile: -e UserWarning -e run_backward"

# validate SET CONFIGS REPEATS TIMEOUT: every schedule of CONFIGS priced by $P, packed into OUT/SET-rep.tgz
validate() {
  local W=$BASE/$1-rep S=$SECONDS; mkdir -p $W
  nvidia-smi --query-gpu=name,uuid,driver_version,power.limit --format=csv > $W/gpu.csv
  echo "STEPS=$STEPS WARMUP=$WARMUP REPEATS=$3 PIN=$PIN CONFIGS=$CONFIGS PHASE=$PHASE HOST_STEPS=$HOST_STEPS" > $W/protocol.txt
  [ -f "$P" ] || [ ! -f "$P.gz" ] || P=$P.gz  # the profiles under results/ are gzip-compressed
  local C=$W/h200x1-one-gpu.json${P##*.json}  # the copy keeps its .gz
  [ "$P" -ef $C ] || cp $P $C
  timeout $4 $ON torchrun --nproc_per_node=1 -m moesched validate --profile $P --configs $2 \
    --out $W/validation-one-gpu.csv --steps $STEPS --warmup $WARMUP --regime one-gpu --repeats $3 --workers $WORKERS ${TRACES:+--traces $W/traces} \
    2>&1 | $F > $W/log-validate.txt; echo "validate $((SECONDS-S)) s" >> $W/log-validate.txt
  tail -n 14 $W/log-validate.txt
  tar -C $BASE -czf $OUT/$1-rep.tgz $1-rep  # the device tool returns a few files only
}

# without P, PHASE=heldout, profiled and both measure the profile first, into the first set's folder
if [ -z "$P" ] && { [ "$PHASE" = heldout ] || [ "$PHASE" = profiled ] || [ "$PHASE" = both ]; }; then
  D=$BASE/$([ "$PHASE" = profiled ] && echo profiled || echo $HSET)-rep; mkdir -p $D; P=$D/h200x1-one-gpu.json
  S=$SECONDS; timeout $([ "$PHASE" = both ] && echo 300 || echo ${PTIMEOUT:-330}) $ON torchrun --nproc_per_node=1 -m moesched profile \
    --out $P --models $CONFIGS ${HOST_STEPS:+--host-steps $HOST_STEPS} 2>&1 | $F > $D/log-profile.txt
  echo "profile $((SECONDS-S)) s" >> $D/log-profile.txt; tail -n 3 $D/log-profile.txt
fi
case $PHASE in
  heldout) validate $HSET $HELDOUT $REPEATS ${VTIMEOUT:-$((590 - SECONDS))} ;;
  profiled) validate profiled $CONFIGS $REPEATS ${VTIMEOUT:-$((590 - SECONDS))} ;;
  both) validate $HSET $HELDOUT ${HREPEATS:-3} 190  # took 161-170 s
        validate profiled $CONFIGS ${PREPEATS:-2} $((590 - SECONDS)) ;;     # the rest of the 600 s call
  sets) P=${P:?set P}; validate $HSET $HELDOUT ${HREPEATS:-3} ${VTIMEOUT:-220}
        validate profiled $CONFIGS ${PREPEATS:-2} $((590 - SECONDS)) ;;
  *) echo "PHASE must be heldout, profiled, both or sets" >&2; exit 2 ;;
esac
