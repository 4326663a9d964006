#!/bin/bash
# CPU results for docs/results.md (this machine: 2 cores). Writes results/bench and results/sweeps.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=.
B=results/bench; S=results/sweeps
{ echo "\$ taskset -c 0 python benchmarks/bench_sim.py"; taskset -c 0 python benchmarks/bench_sim.py; } > $B/bench_sim.txt 2>&1
{ echo "\$ taskset -c 0 python benchmarks/bench_solver.py --profile profiles/h200x4-nvlink.json --skip-sweep"; taskset -c 0 python benchmarks/bench_solver.py --profile profiles/h200x4-nvlink.json --skip-sweep
  echo "\$ python benchmarks/bench_solver.py --profile profiles/h200x4-nvlink.json"; python benchmarks/bench_solver.py --profile profiles/h200x4-nvlink.json; } > $B/bench_solver.txt 2>&1
for p in nvlink hostmem 2nodes; do
  for g in schemoe675 fsmoe1458; do
    { echo "\$ python -m moesched sweep --grid $g --profile profiles/h200x4-$p.json --out $S/$g-$p.csv"; /usr/bin/time -f "wall %e s" python -m moesched sweep --grid $g --profile profiles/h200x4-$p.json --out $S/$g-$p.csv 2>&1 | grep -v "it/s\]\|s/it\]" ; } > $S/$g-$p.txt 2>&1
  done
done
{ echo "\$ python benchmarks/bench_cpsat.py --time-limit 10"; python benchmarks/bench_cpsat.py --time-limit 10; } > $B/bench_cpsat.txt 2>&1
echo done > $B/DONE
