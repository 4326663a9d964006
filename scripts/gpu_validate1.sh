#!/bin/bash
# Session 9 on ONE GPU (nvidia-h200): a one-rank profile of the changed executor (host probe
# included), then validate every schedule on four shapes: predicted (with and without the
# host priced by the probe) against measured. One rank: the all-to-alls are local copies,
# so this checks the compute and host model, not the links.   bash scripts/gpu_validate1.sh
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
CFG=results/gpu/session9/configs-1gpu.json
F="grep -v -e ^W1 -e OMP_NUM -e UserWarning -e _warn -e run_backward -e pt/s"
timeout 200 torchrun --nproc_per_node=1 -m moesched profile --out $OUT/h200x1.json --models $CFG --regime one-gpu \
  > $OUT/log-profile.txt 2>&1
grep -v -e pt/s $OUT/log-profile.txt | grep -m1 -A25 -e Traceback -e "error:" ; tail -3 $OUT/log-profile.txt
[ -f $OUT/h200x1.json ] || exit 1
timeout 190 torchrun --nproc_per_node=1 -m moesched validate --profile $OUT/h200x1.json --configs $CFG \
  --out $OUT/validation-1gpu.csv --steps 5 --warmup 2 --regime one-gpu 2>&1 | $F | tail -48
