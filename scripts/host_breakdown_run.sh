export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
F="grep -v -e ^W1 -e OMP_NUM -e ^\*\*\* -e USDT -e UserWarning -e warn"
for REG in nvlink hostmem; do
  [ $REG = hostmem ] && export NCCL_P2P_DISABLE=1
  echo "== $REG"; date -u
  timeout 200 torchrun --nproc_per_node=4 scripts/host_breakdown.py --profile profiles/h200x4-$REG.json \
    --configs docs/validation_configs.json --only gpt2xl-4L --schedules vanilla,flowmoe --out $OUT/$REG 2>&1 | $F | tail -80
done
date -u
