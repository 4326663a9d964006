#!/bin/bash
# The CPU-side numbers of docs/results.md: simulator, solver and CP-SAT benchmarks, and the
# layer-grid sweeps on the three measured 4 x H200 profiles.
#
# Machine: the development and CI kind (2-core x86-64, no GPU); the per-layer solver line
# runs on one core (taskset -c 0). Run from the repository root:
#
#   bash benchmarks/cpu_results.sh             # everything (a few minutes)
#   SWEEPS=0 bash benchmarks/cpu_results.sh    # the benchmarks only
#
# Writes results/bench/bench_{sim,solver,cpsat,routing}.txt and, unless SWEEPS=0,
# results/sweeps/GRID-REGIME.{csv,txt} (each file starts with the command that made it).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=.
B=results/bench; S=results/sweeps
mkdir -p $B $S
{ echo "\$ taskset -c 0 python benchmarks/bench_sim.py"; taskset -c 0 python benchmarks/bench_sim.py; } > $B/bench_sim.txt 2>&1
{ echo "\$ taskset -c 0 python benchmarks/bench_solver.py --profile profiles/h200x4-nvlink.json --skip-sweep"
  taskset -c 0 python benchmarks/bench_solver.py --profile profiles/h200x4-nvlink.json --skip-sweep
  echo "\$ python benchmarks/bench_solver.py --profile profiles/h200x4-nvlink.json"
  python benchmarks/bench_solver.py --profile profiles/h200x4-nvlink.json; } > $B/bench_solver.txt 2>&1
{ echo "\$ python benchmarks/bench_cpsat.py --time-limit 10"; python benchmarks/bench_cpsat.py --time-limit 10; } > $B/bench_cpsat.txt 2>&1
{ echo "\$ python benchmarks/bench_routing.py"; python benchmarks/bench_routing.py; } > $B/bench_routing.txt 2>&1
{ echo "\$ python benchmarks/bench_routing.py --chunk-loads"; python benchmarks/bench_routing.py --chunk-loads; } \
  > $B/bench_routing_chunks.txt 2>&1
[ "${SWEEPS:-1}" = 0 ] && exit 0
for p in nvlink hostmem 2nodes; do
  for g in schemoe675 fsmoe1458; do
    { echo "\$ python -m moesched sweep --grid $g --profile h200x4-$p --out $S/$g-$p.csv"
      /usr/bin/time -f "wall %e s" python -m moesched sweep --grid $g --profile h200x4-$p --out $S/$g-$p.csv 2>&1 \
        | grep -v "it/s\]\|s/it\]"; } > $S/$g-$p.txt 2>&1
  done
done
