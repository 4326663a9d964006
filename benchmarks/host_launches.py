"""Would fp32 expert tasks be priced better by their kernel launches? A re-prediction.

CPU only, repository root. Each argument is a one-GPU held-out folder as
``benchmarks/gpu_heldout_repeats.sh`` writes it (``h200x1-one-gpu.json``,
``validation-one-gpu.csv`` and ``plans-one-gpu.json`` from ``benchmarks/repredict.py
--write-plans``)::

    python benchmarks/host_launches.py results/h200x1/passes/heldout-rep results/h200x1/passes2/heldout-rep

Outside bf16 the executor runs one GEMM per local expert (:func:`moesched.ops.task_ops`,
``grouped=False``), so an fp32 expert task issues more kernels than the same task grouped.
The profile prices a dtype without its own shape curve by the main dtype's pooled host
costs times the median ratio of its samples (:func:`moesched.costs.host.scaled_pool`), which
carries the profiled fp32 shape's launches per task (SwiGLU, three GEMMs per expert) to
every fp32 shape. The alternative priced here: the main pool plus a cost per extra launch
(per expert kind, the median over the profile's fp32 samples of (µs - main pool) / extra
launches), times the extra launches of the priced model. Prints that per-launch cost, the
fp32 rows and the step-time error of every row as run and so priced. Nothing is measured.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pandas as pd

import moesched.graph as graph
from moesched.configs import load_configs
from moesched.host import HostCosts, host_features
from moesched.models import MoEModel
from moesched.ops import work_ops
from moesched.plan import Plan
from moesched.profile import Profile

PROFILED = "results/h200x1/configs-1gpu-dtypes.json"
KINDS = ("expert_fwd", "expert_dx", "expert_dw")


def extra_launches(kind: str, m: MoEModel, work: float) -> int:
    """Kernels a ``kind`` task of ``work`` FLOPs issues beyond the grouped-GEMM version."""
    return len(work_ops(kind, m, work, 1, grouped=False)) - len(work_ops(kind, m, work, 1, grouped=True))


def per_launch_us(prof: Profile, models: dict[str, MoEModel]) -> dict[str, float]:
    """Per expert kind, µs per extra launch over the main pool, from the non-bf16 samples."""
    assert prof.host is not None
    out = {}
    for kind in KINDS:
        got = [(us - prof.host.kinds[kind](x, r)) / extra_launches(kind, models[shape], x)
               for shape, k, x, r, us in prof.meta["samples"]["host"]
               if k == kind and not shape.endswith("bf16") and extra_launches(kind, models[shape], x) > 0]
        out[kind] = statistics.median(got)
    return out


def launch_pricing(host_kinds: dict, per_launch: dict[str, float]):
    """``graph.add_host_costs`` with non-bf16 expert tasks priced by launches."""
    base = graph.add_host_costs

    def add(g, host: HostCosts, shape: str) -> None:
        base(g, host, shape)
        m = g.graph["model"]
        if m.dtype == "bf16":
            return
        for _, a in g.nodes(data=True):
            if a["kind"] in per_launch:
                x, r = host_features(a["kind"], a, g.graph["knobs"], host.x_unit)
                a["host_us"] = host_kinds[a["kind"]](x, r) + per_launch[a["kind"]] * extra_launches(a["kind"], m, x)
    return add


def report(folder: Path) -> None:
    prof = Profile.load(folder / "h200x1-one-gpu.json")
    models = {c.model.shape_key(): c.model for c in load_configs(PROFILED)}
    rows = pd.read_csv(folder / "validation-one-gpu.csv")
    plans = [Plan.from_dict(p) for p in json.loads((folder / "plans-one-gpu.json").read_text())]
    per = per_launch_us(prof, models)
    base = graph.add_host_costs
    graph.add_host_costs = launch_pricing(prof.host.kinds, per)
    try:
        rows["launch_ms"] = [p.replay(prof).makespan_us / 1e3 for p in plans]
    finally:
        graph.add_host_costs = base
    rows["launch_error_pct"] = (rows.launch_ms - rows.measured_ms) / rows.measured_ms * 100
    print(f"== {folder}: µs per extra launch {({k: round(v, 1) for k, v in per.items()})}")
    fp = rows[rows.config.str.contains("fp32")]
    print(fp[["config", "schedule", "measured_ms", "predicted_ms", "error_pct", "launch_ms", "launch_error_pct"]]
          .round(2).to_string(index=False))
    for col in ("error_pct", "launch_error_pct"):
        print(f"  {col}: mean {rows[col].abs().mean():.2f} %, max {rows[col].abs().max():.2f} % over {len(rows)} rows")


def main(argv: list[str]) -> int:
    for folder in argv:
        report(Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
