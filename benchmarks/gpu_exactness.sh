#!/bin/bash
# Exactness of the executor on the GPUs of one machine: fp32 plans on NCCL against the
# single-process reference model (loss and every gradient; torchrun -m executor.selfcheck).
#
# Machine: one host with NP GPUs (nvidia-h200-x4 by default; NP=2 or NP=1 on the smaller
# kinds). Run from the repository root:
#
#   bash benchmarks/gpu_exactness.sh            # NP=4
#   NP=1 bash benchmarks/gpu_exactness.sh
#
# The plans are built for the layout 1xNP by benchmarks/selfcheck_plans.py (the six shipped
# exactness plans of results/h200x4/selfcheck/ plus two larger ones) unless PLANS names
# existing plan files. Writes into OUTDIR (default $OUT, else results/h200xNP/selfcheck):
#   exact*.json           the plans that ran
#   selfcheck.jsonl       one line per plan: ok, loss, ref_loss, max_abs_err, worst parameter
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. PYTHONUNBUFFERED=1
NP=${NP:-4}
OUTDIR=${OUT:-results/h200x$NP/selfcheck}
mkdir -p "$OUTDIR"
if [ -z "${PLANS:-}" ]; then
  python benchmarks/selfcheck_plans.py --cluster 1x$NP --out "$OUTDIR" || exit 1
  PLANS="$OUTDIR/exact*.json"
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 200 torchrun --nproc_per_node=$NP -m executor.selfcheck --plan $PLANS --out "$OUTDIR/selfcheck.jsonl" 2>&1 \
  | grep -v -e ^W1 -e OMP_NUM -e '^\*' | tail -12
