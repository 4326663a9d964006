"""How much of each measured all-to-all and gradient all-reduce ran while compute ran, from
a session's measured traces (rank 0): the executed overlap behind issue 3's speedups.

    python scripts/overlap_report.py results/gpu/session6 [CONFIG ...]

Reads traces-{hostmem,2nodes}.tgz; prints per (regime, config, schedule) the share of
all-to-all time and of all-reduce time that overlaps compute tasks, and the step length.
"""
from __future__ import annotations

import sys
import tarfile
import tempfile
from pathlib import Path

from moesched.trace import read_chrome_trace

A2A = ("dispatch", "combine", "combine_bwd", "dispatch_bwd")


def overlap_us(spans: list[tuple[float, float]], compute: list[tuple[float, float]]) -> float:
    """µs of ``spans`` covered by ``compute`` (compute tasks of one rank never overlap)."""
    return sum(max(0.0, min(e, b) - max(s, a)) for s, e in spans for a, b in compute)


def main(folder: str, configs: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp())
    print("| regime | config | schedule | all-to-all under compute | all-reduce under compute | step ms |\n"
          "|---|---|---|---|---|---|")
    for reg in ("hostmem", "2nodes"):
        tgz = Path(folder) / f"traces-{reg}.tgz"
        if not tgz.exists():
            continue
        with tarfile.open(tgz) as t:
            t.extractall(tmp, filter="data")
        for cfg in configs:
            for sched in ("vanilla", "flowmoe", "moesched"):
                f = tmp / "traces" / f"{reg}_{cfg}_{sched}_single_measured.json"
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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["gpt2xl-4L", "gpt2xl-4L-b16", "mixtral-4L"])
