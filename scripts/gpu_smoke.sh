#!/bin/bash
# First GPU check (nvidia-h200-x4): NCCL exactness of the executor on 4 GPUs (fp32), a
# stand-alone run with a trace, and a small validate run. PLAN=some-plan.json bash scripts/gpu_smoke.sh
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi topo -m | head -6
python -c "import torch;print(torch.__version__, torch.cuda.device_count(), torch.cuda.nccl.version())"
echo "== selfcheck (NCCL, fp32)"
timeout 200 torchrun --nproc_per_node=4 -m executor.selfcheck --plan results/gpu/selfcheck-plans/exact*.json --out $OUT/selfcheck.jsonl 2>&1 | grep -v "^\*\|OMP_NUM" | tail -25
echo "== run with trace (host memory)"
NCCL_P2P_DISABLE=1 timeout 120 torchrun --nproc_per_node=4 -m executor.run --plan $PLAN --steps 10 --warmup 3 --trace $OUT/mx_flowmoe_hostmem.json 2>&1 | grep -v "^\*\|OMP_NUM" | tail -8
echo "== validate (host memory)"
NCCL_P2P_DISABLE=1 timeout 240 torchrun --nproc_per_node=4 -m moesched validate --profile profiles/analytic-h200x4-nvlink.json --configs docs/validation_configs_2nodes.json --schedules vanilla,flowmoe,moesched --regime hostmem-smoke --out $OUT/smoke_validate.csv --steps 8 --warmup 3 2>&1 | grep -v "^\*\|OMP_NUM" | tail -15
