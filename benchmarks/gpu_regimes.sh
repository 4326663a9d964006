#!/bin/bash
# Profile and validate on the GPUs of one machine, in one or more network regimes.
#
# For each regime REG given: measure a profile (torchrun -m moesched profile), print its fits
# (moesched profile --check), execute every schedule's plan on the validation configurations
# and compare measured with predicted step time (torchrun -m moesched validate), then run the
# DeepSpeed-MoE peer on the same shapes when its wheels are in .whl/ (docs/validating.md).
#
# Machine: one host with NP GPUs (meant for nvidia-h200-x4; NP=2 on nvidia-h200-x2, NP=1 on
# nvidia-h200 with the regime one-gpu). Run from the repository root:
#
#   bash benchmarks/gpu_regimes.sh nvlink hostmem 2nodes         # 4 GPUs, the three regimes
#   NP=2 REPEATS=2 bash benchmarks/gpu_regimes.sh nvlink hostmem 2nodes
#   NP=1 CFG=results/h200x1/configs-1gpu.json NODS=1 bash benchmarks/gpu_regimes.sh one-gpu
#
# Regimes: nvlink (as the machine is); hostmem (NCCL_P2P_DISABLE=1: GPU-to-GPU traffic through
# host memory); 2nodes (two emulated nodes: --emulate-nodes 2, NVLink inside a node, sockets
# between nodes); one-gpu (NP=1: all-to-alls are local copies; measures compute and host).
#
# Writes, per regime, into OUTDIR/REG/ (OUTDIR defaults to $OUT, else results/h200xNP):
#   h200xNP-REG.json       the profile as measured
#   check-REG.txt          moesched profile --check of it
#   validation-REG.csv     one row per (config, schedule): predicted_ms, measured_ms, error_pct, ...
#   deepspeed-REG.csv      the DeepSpeed-MoE peer's step time per config (when .whl/ exists)
#   traces-REG.tgz         measured Chrome traces of every run
#   log-REG.txt            the console output
# Then `python benchmarks/repredict.py --write-plans OUTDIR/REG` keeps the plan of every row.
#
# Environment knobs: NP (GPUs, default 4), CFG (config set, default
# docs/validation_configs.json), SCHEDULES (comma list, default all), STEPS (timed steps per
# plan, default 6), REPEATS (interleaved repeats of every plan, default 1), NODS=1 (skip the
# DeepSpeed peer), VTMO (validate timeout s, default 400).
set -u
[ $# -ge 1 ] || { echo "usage: bash benchmarks/gpu_regimes.sh nvlink|hostmem|2nodes|one-gpu ..." >&2; exit 2; }
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
NP=${NP:-4}
P=h200x$NP
OUTDIR=${OUT:-results/$P}
CFG=${CFG:-docs/validation_configs.json}
STEPS=${STEPS:-6}
REPEATS=${REPEATS:-1}
SCH=${SCHEDULES:+--schedules $SCHEDULES}
F="grep -v -e ^W1 -e OMP_NUM -e ^\*\*\*"

regime() {  # $1 regime, $2 its folder
  local REG=$1 D=$2 EM=""
  case $REG in
    nvlink|one-gpu) ;;
    hostmem) export NCCL_P2P_DISABLE=1 ;;
    2nodes) export NCCL_SOCKET_NTHREADS=4 NCCL_NSOCKS_PERTHREAD=4; EM="--emulate-nodes 2" ;;
    *) echo "unknown regime $REG" >&2; return 2 ;;
  esac
  mkdir -p "$D/traces"
  echo "== profile $REG"; date -u
  timeout 240 torchrun --nproc_per_node=$NP -m moesched profile --out "$D/$P-$REG.json" --models $CFG $EM 2>&1 | $F | tail -4
  python -m moesched profile --check "$D/$P-$REG.json" > "$D/check-$REG.txt" 2>&1
  echo "== validate $REG"; date -u
  timeout ${VTMO:-400} torchrun --nproc_per_node=$NP -m moesched validate --profile "$D/$P-$REG.json" --configs $CFG \
    --regime $REG --out "$D/validation-$REG.csv" --traces "$D/traces" --steps $STEPS --warmup 2 --repeats $REPEATS \
    $SCH $EM 2>&1 | $F
  if [ -d .whl ] && [ -z "${NODS:-}" ]; then
    echo "== deepspeed $REG"; date -u
    python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site:.
    DS_BUILD_OPS=0 timeout ${DTMO:-150} torchrun --nproc_per_node=$NP -m executor.peer_deepspeed --configs $CFG \
      --regime $REG --out "$D/deepspeed-$REG.csv" --steps $STEPS --warmup 2 $EM 2>&1 | grep -e "^deepspeed" -e rror | tail -12
  fi
  date -u
  tar czf "$D/traces-$REG.tgz" -C "$D" traces && rm -rf "$D/traces"
}

for REG in "$@"; do
  D=$OUTDIR/$REG
  mkdir -p "$D"
  ( regime "$REG" "$D" ) 2>&1 | tee "$D/log-$REG.txt"
done
