#!/bin/bash
# FlowMoE-style plans against vanilla EP with interleaved repeats, on the shipped profiles
# (issue 3's executed speedups, session 6). Usage (device tool, repo root):
#   bash scripts/gpu_repeats.sh            # results in $OUT: repeats-{hostmem,2nodes}.csv and logs
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
CFG=${CFG:-docs/issue3_configs.json}
F="grep -e ^validate -e ^step -e ^rank -e ^\s -e Error"
for REG in hostmem 2nodes; do
  EM=""
  if [ $REG = hostmem ]; then export NCCL_P2P_DISABLE=1; else unset NCCL_P2P_DISABLE
    export NCCL_SOCKET_NTHREADS=4 NCCL_NSOCKS_PERTHREAD=4; EM="--emulate-nodes 2"; fi
  echo "== $REG"; date -u
  timeout 280 torchrun --nproc_per_node=4 -m moesched validate --profile profiles/h200x4-$REG.json --configs $CFG \
    --regime $REG --schedules vanilla,flowmoe,moesched --out $OUT/repeats-$REG.csv --steps 5 --warmup 2 \
    --repeats 3 $EM 2>&1 | $F | tee $OUT/log-repeats-$REG.txt
done
date -u
