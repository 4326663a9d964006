#!/usr/bin/env bash
# Is the host's speed a trait of the process or of the moment? One GPU (nvidia-h200):
# N fresh processes one after the other, each taking the host probe
# (executor.profiling.timing.host_probe_us) K times, 1 s apart, pinned to cores PIN.
#   OUT=DIR [N=8 K=5 PIN=2,3] bash benchmarks/gpu_host_drift.sh    -> DIR/host-drift.csv
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=${PYTHONPATH:-.}
OUT=${OUT:?set OUT}; N=${N:-8}; K=${K:-5}; PIN=${PIN:-2,3}
echo "process,probe,us" > $OUT/host-drift.csv
for i in $(seq 1 $N); do
  taskset -c $PIN python - "$i" "$K" >> $OUT/host-drift.csv <<'PY'
import sys, time, torch
from executor.profiling.timing import host_probe_us
dev = torch.device("cuda")
torch.zeros(1, device=dev)
for j in range(int(sys.argv[2])):
    print(f"{sys.argv[1]},{j},{host_probe_us(dev)}")
    time.sleep(1)
PY
done
python - $OUT/host-drift.csv <<'PY'
import sys, pandas as pd
d = pd.read_csv(sys.argv[1]); g = d.groupby("process").us
med = g.median()
print("per process median us:", med.round(2).tolist())
print(f"between processes: max/min of medians {med.max() / med.min():.2f}; "
      f"within a process: mean max/min {(g.max() / g.min()).mean():.2f}")
PY
