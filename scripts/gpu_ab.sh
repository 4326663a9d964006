#!/bin/bash
# A/B runs of executor options on 4 x H200, in every regime, with the shipped profiles (no
# profiling): host issue modes (ISSUE, comma list of single/threads) x CUDA graphs of the
# attention block (GRAPHS, space list of 1/0). Usage (device tool, repo root):
#   OUT=... [ISSUE=single,threads] [GRAPHS="1 0"] [REGIMES="hostmem 2nodes nvlink"] bash scripts/gpu_ab.sh [CONFIGS] [SCHEDULES]
# Session 3 ran ISSUE=single,threads GRAPHS=0 (before graphs existed: ab-REGIME.csv), then
# ISSUE=single GRAPHS="1 0" (graphs-REGIME-G.csv); results in results/gpu/session3/.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
CFG=${1:-results/gpu/session3/configs-ab.json}
SCH=${2:-vanilla,pipemoe,fsmoe,flowmoe,moesched}
F="grep -v -e ^W1 -e OMP_NUM -e ^\*\*\*"
mkdir -p $OUT/traces
for REG in ${REGIMES:-hostmem 2nodes nvlink}; do
  for G in ${GRAPHS:-1 0}; do
  (
  EM=""
  case $REG in
    hostmem) export NCCL_P2P_DISABLE=1 ;;
    2nodes) export NCCL_SOCKET_NTHREADS=4 NCCL_NSOCKS_PERTHREAD=4; EM="--emulate-nodes 2" ;;
  esac
  echo "== $REG graphs=$G"; date -u
  MOESCHED_CUDA_GRAPHS=$G timeout ${TMO:-200} torchrun --nproc_per_node=4 -m moesched validate \
    --profile profiles/h200x4-$REG.json --configs $CFG --schedules $SCH --issue ${ISSUE:-single} \
    --regime $REG-g$G --out $OUT/graphs-$REG-$G.csv --traces $OUT/traces --steps ${STEPS:-6} --warmup 2 $EM 2>&1 | $F
  )
  done
done 2>&1 | tee $OUT/log-graphs.txt
tar czf $OUT/traces-graphs.tgz -C $OUT traces && rm -rf $OUT/traces
