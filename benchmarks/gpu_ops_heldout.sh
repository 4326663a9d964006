#!/usr/bin/env bash
# Operator-level compute costs on one GPU (nvidia-h200): profile the four shapes of
# results/h200x1/configs-1gpu.json (operator tables included), then validate every schedule
# on the held-out shapes of benchmarks/heldout-shapes.json (which the profile did not
# measure) and on the profiled shapes. Each validate CSV has a column per compute pricing:
# predicted_ms (shape curve > operator composition > per-kind line), predicted_kindline_ms
# (no operator tables: the per-kind line where no shape curve) and predicted_ops_ms
# (operator composition everywhere). Run from the repository root; writes into OUT
# (default results/h200x1):
#
#   bash benchmarks/gpu_ops_heldout.sh
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
OUT=${OUT:-results/h200x1}
F="grep --line-buffered -v -e ^W1 -e OMP_NUM -e ^\*\*\* -e profile: -e UserWarning -e run_backward"
P=$OUT/h200x1-ops.json
timeout 260 torchrun --nproc_per_node=1 -m moesched profile --out $P --models results/h200x1/configs-1gpu.json 2>&1 | $F | tee $OUT/log-profile-ops.txt | tail -5
timeout 120 torchrun --nproc_per_node=1 -m moesched validate --profile $P --configs benchmarks/heldout-shapes.json \
  --out $OUT/heldout-ops.csv --steps 5 --warmup 2 --regime one-gpu 2>&1 | $F > $OUT/log-validate-ops.txt
timeout 150 torchrun --nproc_per_node=1 -m moesched validate --profile $P --configs results/h200x1/configs-1gpu.json \
  --out $OUT/profiled-ops.csv --steps 5 --warmup 2 --regime one-gpu 2>&1 | $F >> $OUT/log-validate-ops.txt
tail -30 $OUT/log-validate-ops.txt
