#!/bin/bash
# Host issue time of the executor on ONE GPU (nvidia-h200): world of 1 rank, cluster 1x1,
# the validation shapes, vanilla and FlowMoE plans, CUDA graphs on. The all-to-alls are
# one-rank NCCL calls, so this measures the host path and the GPU's compute, not links.
#   TAG=before bash scripts/gpu_host1.sh     (device tool, repository root)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
TAG=${TAG:-run}
ONLY=${ONLY:-gpt2xl-4L,gpt2xl-4L-b16,mixtral-2L,deepseek-4L}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python -c "import torch;print(torch.__version__, torch.cuda.device_count(), torch.cuda.nccl.version())"
timeout ${TMO:-400} torchrun --nproc_per_node=1 scripts/host_breakdown.py --profile profiles/h200x4-nvlink.json \
  --configs docs/validation_configs.json --only $ONLY --schedules ${SCHED:-vanilla,flowmoe} --graphs 1 \
  --cluster 1x1 --steps ${STEPS:-8} --out $OUT/hb-$TAG 2>&1 | grep -v -e ^W1 -e OMP_NUM -e '^\*\*\*' -e USDT -e UserWarning
mv $OUT/hb-$TAG/host_breakdown.json $OUT/host_breakdown-$TAG.json 2>/dev/null; rm -rf $OUT/hb-$TAG
