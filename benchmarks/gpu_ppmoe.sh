#!/usr/bin/env bash
# PPMoE's GEMMs on one GPU (nvidia-h200): serial per-expert GEMMs against one grouped GEMM
# for every preset and TP size (benchmarks/gpu_ppmoe.py); then the CPU-side report beside
# the profile's prices (benchmarks/ppmoe_gemm_report.py). Under 4 minutes on one H200.
# Run from the repository root; writes only under OUT:
#
#   OUT=/tmp/out bash benchmarks/gpu_ppmoe.sh
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
timeout 200 python benchmarks/gpu_ppmoe.py --device cuda --out "$OUT/ppmoe_gemms.json" 2>&1 | tee "$OUT/log-ppmoe.txt" | tail -3
timeout 30 python benchmarks/ppmoe_gemm_report.py "$OUT/ppmoe_gemms.json" --profile h200x4-nvlink | tee "$OUT/ppmoe_gemms.txt"
