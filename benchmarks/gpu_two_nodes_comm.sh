#!/bin/bash
# Cluster check (a) on a fresh two-node profile: the GPUs of one host pose as two nodes
# (--emulate-nodes 2: NVLink inside a node, NCCL sockets between), the collectives are timed
# in COMM_PASSES passes (default 9, each pass's median kept), and the tiers calibrated on the
# intra- and inter-node points price the whole-world points (benchmarks/heldout_collectives.py).
#
# Machine: one host with NP GPUs (default 4: nvidia-h100-x4 or nvidia-h200-x4). Run from the
# repository root:
#
#   OUT=DIR bash benchmarks/gpu_two_nodes_comm.sh                 # 4 GPUs
#   OUT=DIR QUICK=1 bash benchmarks/gpu_two_nodes_comm.sh         # CPU/gloo: a smoke run of the script
#
# Writes OUT/h200x4-2nodes.json.gz (the profile), OUT/profile.log and
# OUT/heldout_collectives.txt (every point, then mean and max error and floor per collective).
# Knobs: NP, COMM_PASSES, MODELS (profiled shapes, default docs/validation_configs.json on GPUs,
# the CPU default with QUICK=1), NETWORK (hop latencies, default h200x4-box).
set -eu
cd "$(dirname "$0")/.."
export PYTHONPATH=. NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export NCCL_SOCKET_NTHREADS=4 NCCL_NSOCKS_PERTHREAD=4
OUT=${OUT:?set OUT to the output folder}
NP=${NP:-4}
P="$OUT/h200x4-2nodes.json"
mkdir -p "$OUT"
if [ -n "${QUICK:-}" ]; then extra=(--quick ${MODELS:+--models "$MODELS"}); else extra=(--models "${MODELS:-docs/validation_configs.json}"); fi
torchrun --nproc_per_node="$NP" -m moesched profile --out "$P" --emulate-nodes 2 \
  --comm-passes "${COMM_PASSES:-9}" "${extra[@]}" > "$OUT/profile.log" 2>&1 || { tail -5 "$OUT/profile.log"; exit 1; }
tail -1 "$OUT/profile.log"
python benchmarks/heldout_collectives.py "$P" --network "${NETWORK:-h200x4-box}" --points \
  | tee "$OUT/heldout_collectives.txt"
gzip -9nf "$P"
