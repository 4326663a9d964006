#!/usr/bin/env bash
# The DEP forward tasks on one GPU against a profile of the same GPU that measured them:
# profile Mixtral-8x7B, DeepSeek-V2-Lite and Qwen3-30B-A3B on this H200 (no host steps) with
# --inference, which also times the DEP tasks themselves (executor.profiling.dep: attention,
# shared and expert task of executor.dep at m_a = 1, 2, 4, 8 samples of S = 4096 tokens, the
# expert task on m_a top_k S copies for E/eg local experts, eg = 1, 2, 4, 8; the profile's
# dep section), then benchmarks/gpu_findep.py at S = 4096 with the expert rows of
# (ag, eg) = (2, 2) (E/2 local experts) and of (1, 1) (all E local): every row is a measured
# point of a dep curve, priced with price_source "dep". About 3-4 minutes on one H200 (the
# profile ~2.5 min, each gpu_findep run ~20 s). From the repository root:
#
#   OUT=/tmp/out bash benchmarks/gpu_findep_profiled.sh
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
SECONDS=0
timeout 420 torchrun --nproc_per_node=1 -m moesched profile --out "$OUT/h200x1-dep.json" \
  --models Mixtral-8x7B,DeepSeek-V2-Lite,Qwen3-30B-A3B --host-steps 0 --inference > "$OUT/log-profile.txt" 2>&1
tail -2 "$OUT/log-profile.txt"
echo "profile: ${SECONDS} s"
for split in "2 2" "1 1"; do
  set -- $split
  timeout 120 python benchmarks/gpu_findep.py --seqs 4096 --ag "$1" --eg "$2" --profile "$OUT/h200x1-dep.json" \
    --out "$OUT/findep-$1$2" 2>&1 | tail -5
done
echo "total: ${SECONDS} s"
