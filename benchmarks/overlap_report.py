"""How much of each measured all-to-all and gradient all-reduce ran while compute ran, from
the measured traces of a validation run (rank 0): the overlap a plan really got.

CPU only, any machine, repository root. Each RUN_FOLDER is one regime's folder as written by
``benchmarks/gpu_regimes.sh`` (it holds ``traces-REG.tgz``)::

    python benchmarks/overlap_report.py results/h200x4/hostmem results/h200x4/2nodes
    python benchmarks/overlap_report.py results/h200x4/2nodes --configs mixtral-4L --schedules vanilla,moesched

Prints a markdown table: per (regime, config, schedule) the share of all-to-all time and of
gradient all-reduce time that overlaps compute tasks on rank 0, and the step length (ms).
Writes nothing.
"""
from __future__ import annotations

import argparse
import tarfile
import tempfile
from pathlib import Path

from moesched.trace import read_chrome_trace

A2A = ("dispatch", "combine", "combine_bwd", "dispatch_bwd")


def overlap_us(spans: list[tuple[float, float]], compute: list[tuple[float, float]]) -> float:
    """µs of ``spans`` covered by ``compute`` (compute tasks of one rank never overlap)."""
    return sum(max(0.0, min(e, b) - max(s, a)) for s, e in spans for a, b in compute)


def report(tgz: Path, configs: list[str], schedules: list[str], tmp: Path) -> None:
    """Print one table row per measured (config, schedule) trace in ``tgz``."""
    reg = tgz.name[len("traces-"):-len(".tgz")]
    with tarfile.open(tgz) as t:
        t.extractall(tmp / reg, filter="data")
    for cfg in configs:
        for sched in schedules:
            f = tmp / reg / "traces" / f"{reg}_{cfg}_{sched}_single_measured.json"
            if not f.exists():
                continue
            df = read_chrome_trace(f).df
            df = df[df["rank"] == 0]
            comp = list(zip(df[df.resource == "compute"].start_us, df[df.resource == "compute"].end_us))
            cells = []
            for sel in (df[df.kind.isin(A2A)], df[df.kind == "grad_ar"]):
                tot = float((sel.end_us - sel.start_us).sum())
                cov = overlap_us(list(zip(sel.start_us, sel.end_us)), comp)
                cells.append(f"{100 * cov / tot:.0f}% of {tot / 1e3:.1f} ms" if tot else "-")
            print(f"| {reg} | {cfg} | {sched} | {cells[0]} | {cells[1]} | {df.end_us.max() / 1e3:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="run folders holding traces-REG.tgz")
    ap.add_argument("--configs", default="mixtral-2L,mixtral-4L,gpt2xl-4L-b16,gpt2xl-4L")
    ap.add_argument("--schedules", default="vanilla,flowmoe,moesched")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    print("| regime | config | schedule | all-to-all under compute | all-reduce under compute | step ms |\n"
          "|---|---|---|---|---|---|")
    for folder in a.folders:
        for tgz in sorted(folder.glob("traces-*.tgz")):
            report(tgz, a.configs.split(","), a.schedules.split(","), tmp)


if __name__ == "__main__":
    main()
