#!/bin/bash
# Session 9 on ONE GPU (nvidia-h200; no multi-GPU kind was lent): host time of the executor
# before and after the host-path changes, interleaved, then fp32 exactness on the GPU.
#   rm -rf .base && mkdir .base && git archive <before-commit> executor moesched | tar -x -C .base
#   device run with carry [".base"]:  bash scripts/gpu_host9.sh
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
ONLY=${ONLY:-gpt2xl-4L,gpt2xl-4L-b16,mixtral-2L,deepseek-4L}
F="grep -v -e ^W1 -e OMP_NUM -e UserWarning -e _warn -e run_backward"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
sections() {  # $1 code tree, $2 tag
  PYTHONPATH=$1 timeout 240 torchrun --nproc_per_node=1 scripts/host_sections.py --profile profiles/h200x4-nvlink.json \
    --configs docs/validation_configs.json --only $ONLY --schedules vanilla,flowmoe --cluster 1x1 --steps 10 \
    --out $OUT/sections-$2.json 2>&1 | $F | grep -e "^==" -e rror
}
[ -n "$NOSELF" ] || {
echo "== selfcheck (fp32, NCCL, 1 GPU)"
PYTHONPATH=. timeout 200 torchrun --nproc_per_node=1 -m executor.selfcheck \
  --plan results/gpu/selfcheck-plans/x1/exact*.json --out $OUT/selfcheck-x1.jsonl 2>&1 | $F | tail -12; }
for i in 1 2; do sections .base before$i; sections . after$i; done
