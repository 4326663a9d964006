#!/usr/bin/env bash
# Routing traces from real training on one GPU (nvidia-h200): the training example's
# byte-level MoE language model (4 layers, M 1024, 16 experts, top-2, bf16) trained on the
# standard library's sources for 1,000 steps, every step's routing recorded, under two
# routers: top-k softmax without a balancing loss, and DeepSeek-V3's sigmoid router with
# its auxiliary-loss-free bias. Writes $OUT/h200-bytelm-*.jsonl (traces), *.log, *.metrics.jsonl.
#
#   OUT=/tmp/out bash benchmarks/gpu_traces.sh
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
F="grep --line-buffered -v -e ^W1 -e OMP_NUM -e ^\*\*\* -e UserWarning -e run_backward"
run() {  # name, then the example's flags
  local name=$1; shift
  timeout 150 torchrun --nproc_per_node=1 examples/train_moe_lm.py --device cuda --dtype bf16 \
    --profile results/h200x1/h200x1-ops.json.gz --text-bytes 4000000 --layers 4 --d-model 1024 --heads 16 \
    --experts-per-rank 16 --seq-len 1024 --batch 8 --steps 1000 --lr 1e-3 --log-every 100 \
    --metrics "$OUT/$name.metrics.jsonl" --record-routing "$OUT/$name.jsonl" "$@" 2>&1 | $F | tee "$OUT/$name.log" | tail -2
}
run h200-bytelm-L4-E16-topk --router topk_softmax
run h200-bytelm-L4-E16-dsv3 --router deepseek_v3
