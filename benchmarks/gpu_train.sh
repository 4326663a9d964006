#!/usr/bin/env bash
# The training example on one GPU (nvidia-h200): a byte-level MoE language model trained on
# the Python standard library's sources, bf16, NCCL world of one rank, the plan solved on the
# one-H200 operator profile (results/h200x1/h200x1-ops.json.gz), so each logged step prints the
# measured MoE blocks beside the plan's prediction. Two sizes; each writes one JSON line per
# step into $OUT/train-<size>.jsonl and its console into $OUT/train-<size>.log.
#
#   OUT=results/h200x1/train bash benchmarks/gpu_train.sh
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
OUT=${OUT:-results/h200x1/train}
mkdir -p "$OUT"
P=results/h200x1/h200x1-ops.json.gz
F="grep --line-buffered -v -e ^W1 -e OMP_NUM -e ^\*\*\* -e UserWarning"
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/machine.txt"
run() {  # size, then the example's flags
  local size=$1; shift
  rm -f "$OUT/train-$size.jsonl"
  timeout 240 torchrun --nproc_per_node=1 examples/train_moe_lm.py --device cuda --dtype bf16 --profile $P \
    --text-bytes 4000000 --metrics "$OUT/train-$size.jsonl" "$@" 2>&1 | $F | tee "$OUT/train-$size.log" | tail -4
}
run small --layers 4 --d-model 1024 --heads 16 --experts-per-rank 8 --seq-len 1024 --batch 8 --steps 600 --lr 1e-3 --log-every 50
run medium --layers 8 --d-model 2048 --heads 16 --experts-per-rank 16 --seq-len 2048 --batch 4 --steps 300 --lr 6e-4 --log-every 25
