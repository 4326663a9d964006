#!/bin/bash
# The measured cost of moving an expert's parameters and Adam state on one GPU, put into
# the h200x4-nvlink profile and used by the placement replay (issue 22).
#
# Machine: one H200 (nvidia-h200). Run from the repository root (under 4 minutes):
#
#   OUT=/some/dir bash benchmarks/gpu_placement.sh
#
# Writes into OUTDIR (default $OUT, else results/h200x1/placement):
#   h200x4-nvlink-move.json  the profile with meta.expert_move (device -> pinned host ->
#                            device copies of 1/8 .. 4 experts of DeepSeek-V2-Lite state)
#   placemove.txt            the measured sizes, times and bandwidths
#   report.txt               benchmarks/placement_move_report.py: measured copy vs link price
#   placement.txt            moesched placement replay priced with the measured move cost
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
OUTDIR=${OUT:-results/h200x1/placement}
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 120 python -m executor.placemove --profile h200x4-nvlink --out "$OUTDIR/h200x4-nvlink-move.json" \
  --device cuda --repeats 20 2>&1 | tee "$OUTDIR/placemove.txt" || exit 1
python benchmarks/placement_move_report.py "$OUTDIR/h200x4-nvlink-move.json" 2>&1 | tee "$OUTDIR/report.txt"
timeout 90 python -m moesched placement --model DeepSeek-V2-Lite --profile "$OUTDIR/h200x4-nvlink-move.json" \
  --routing zipf:1.0 --steps 100 --interval 25 2>&1 | tee "$OUTDIR/placement.txt"
