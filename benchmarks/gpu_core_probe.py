"""Which host cores of a GPU machine run the executor's host work fast, and do they stay so?

One process, on a CUDA machine (repository root, ``PYTHONPATH=.``)::

    python benchmarks/gpu_core_probe.py --rounds 30 --out DIR/core-probe.csv

Each round moves this process onto every core in turn (``os.sched_setaffinity``) and takes
the host probe there (:func:`executor.profiling.timing.host_probe_us`: µs per iteration of a
small add, index_select and event record), then sleeps ``--pause`` s. Writes one row per
(round, core) and prints, per core, the median probe and its spread over rounds (the
90th over the 10th percentile): a core whose probe stays low is a better place to pin the
profiler and validate than one that swings.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import torch

from executor.profiling.timing import host_probe_us


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between rounds")
    ap.add_argument("--out", required=True, help="CSV: round, core, probe_us, unix time")
    a = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cores = sorted(os.sched_getaffinity(0))
    rows = []
    for r in range(a.rounds):
        for c in cores:
            os.sched_setaffinity(0, {c})
            rows.append((r, c, host_probe_us(dev, n=200, reps=5), round(time.time(), 3)))
        time.sleep(a.pause)
    os.sched_setaffinity(0, set(cores))
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "core", "probe_us", "time_s"])
        w.writerows(rows)
    for c in cores:
        v = sorted(p for _, cc, p, _ in rows if cc == c)
        lo, hi = v[len(v) // 10], v[(len(v) * 9) // 10]
        print(f"core {c:2d}: median {statistics.median(v):5.1f} us, p10 {lo:5.1f}, p90 {hi:5.1f} ({hi / lo:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
