#!/usr/bin/env bash
# The shipped routing traces: a small byte-level MoE language model trained on the Python
# standard library's sources (examples/train_moe_lm.py), 2 gloo ranks on CPU, every step's
# routing recorded. Run from the repository root: bash routing/make_traces.sh
set -euo pipefail
export OMP_NUM_THREADS=1
python -m torch.distributed.run --nproc_per_node=2 --master_port=29613 examples/train_moe_lm.py \
  --steps 400 --log-every 50 --record-routing routing/bytelm-L2-E4-top2.jsonl
python -m torch.distributed.run --nproc_per_node=2 --master_port=29614 examples/train_moe_lm.py \
  --steps 400 --log-every 50 --layers 4 --d-model 96 --experts-per-rank 4 \
  --record-routing routing/bytelm-L4-E8-top2.jsonl
