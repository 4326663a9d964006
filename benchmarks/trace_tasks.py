"""Measured against predicted GPU time per compute task kind and chunk, from the traces
``moesched validate --traces`` writes (``<regime>_<config>_<schedule>_single_{measured,predicted}.json``).

CPU only, repository root::

    python benchmarks/trace_tasks.py results/h200x1/traces-validate/profiled results/h200x1/traces-validate/heldout

A measured compute task's interval runs from a CUDA event recorded on its stream before its
kernels to one after them (:meth:`executor.runtime.PlannedStep.timeline`), so where the GPU
waits for the host to issue the kernels the wait is inside it. Only tasks the host had
issued in full before the GPU reached them count (host issue end <= GPU start; host and
GPU clocks aligned at the first forward dispatch, where the host waits for the GPU's
routing counts). Prints, per config, kind, chunked (forward in two or more chunks) and
chunk index: tasks, median measured / predicted, median measured and predicted µs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from moesched.trace import read_chrome_trace


def host_offset_us(md: pd.DataFrame, host: pd.DataFrame) -> float:
    """Host clock minus GPU clock: the host's wait at the first forward dispatch ends when the
    GPU ends the task before it."""
    order = list(md.index)
    first = next(t for t in order if ".F.dispatch" in t)
    before = order[order.index(first) - 1]
    return float(host.loc[first, "start_us"] + host.loc[first, "wait_us"] - md.loc[before, "end_us"])


def task_rows(measured: Path) -> list[dict]:
    """One row per compute task of one plan's traces."""
    cfg, sched = measured.name.split("_")[1:3]
    m, p = read_chrome_trace(measured), read_chrome_trace(str(measured).replace("_measured", "_predicted"))
    md, pdf, host = m.df.set_index("task"), p.df.set_index("task"), m.host.set_index("task")
    off = host_offset_us(md, host)
    chunked = bool((md[md.kind == "expert_fwd"].chunk > 0).any())
    rows = []
    for t, a in md[md.resource == "compute"].iterrows():
        rows.append(dict(config=cfg, schedule=sched, chunked=chunked, kind=a.kind, chunk=int(a.chunk),
                         full=bool(host.loc[t, "end_us"] - off <= a.start_us),
                         measured_us=a.end_us - a.start_us, predicted_us=pdf.loc[t, "end_us"] - pdf.loc[t, "start_us"]))
    return rows


def table(folders: list[str]) -> pd.DataFrame:
    rows = [r for f in folders for tr in sorted(Path(f, "traces").glob("*_measured.json")) for r in task_rows(tr)]
    if not rows:
        print(f"trace_tasks: error: no traces/*_measured.json under {' '.join(folders) or '(no folder given)'}"
              " (moesched validate --traces writes them)", file=sys.stderr)
        sys.exit(2)
    d = pd.DataFrame(rows)
    d = d[d.full]
    d["ratio"] = d.measured_us / d.predicted_us
    return d.groupby(["config", "kind", "chunked", "chunk"]).agg(
        n=("ratio", "size"), ratio=("ratio", "median"), measured_us=("measured_us", "median"),
        predicted_us=("predicted_us", "median")).round(3)


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 1000)
    print(table(sys.argv[1:]).to_string())
