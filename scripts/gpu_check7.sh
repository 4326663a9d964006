#!/bin/bash
# Session 7, last call: the shipped profiles (all-to-all extrapolation fix in effect) on
# GPT2-XL-4L-b16 and Mixtral-4L, through host memory and on two nodes, 2 interleaved repeats.
# Usage (device tool, repo root): bash scripts/gpu_check7.sh   -> $OUT/check7-REG.csv, log
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
CFG=results/gpu/session7/configs-check.json
for REG in hostmem 2nodes; do
  ( EM=""
    case $REG in
      hostmem) export NCCL_P2P_DISABLE=1 ;;
      2nodes) export NCCL_SOCKET_NTHREADS=4 NCCL_NSOCKS_PERTHREAD=4; EM="--emulate-nodes 2" ;;
    esac
    timeout 150 torchrun --nproc_per_node=4 -m moesched validate --profile profiles/h200x4-$REG.json --configs $CFG \
      --regime $REG --out $OUT/check7-$REG.csv --steps 6 --warmup 2 --repeats 2 $EM 2>&1 \
      | grep -e "^validate " -e "error" -e "spread" -e "Spearman" -e "Error" )
done 2>&1 | tee $OUT/log-check7.txt
