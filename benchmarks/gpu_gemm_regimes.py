"""Do a model's expert GEMMs and tasks run at their micro-benchmarked speed inside a step?

One process on a CUDA machine (repository root, ``PYTHONPATH=.``)::

    python benchmarks/gpu_gemm_regimes.py --configs benchmarks/heldout-shapes-4x.json \
        --names gpt-top1-fp32-4x,gpt-top1-4x --out DIR/gemm-regimes.csv

For each named model's expert GEMM shape (rows = tokens x top_k / experts) and dtype it times,
as the profiler does (:func:`executor.profiling.timing.gpu_time_us`: 5 reps after 2):
- each GEMM layout the executor runs beside the profiler's ``gemm`` table's ``nt`` (x @ w.t(),
  also the forward's) at the same m, n, k: ``nn`` (dy @ w: the input gradient of a
  per-expert loop, shapes fc1 and fc2) and ``tn`` (gw.addmm_(dy.t(), a): its weight
  gradient, shape wgrad, the rows the reduction);
- each in two states of the GPU: ``cold`` after ``--idle`` s with nothing running, and
  ``hot`` right after ``--heat`` s of back-to-back GEMMs (a step's sustained load);
- the whole expert tasks (:func:`executor.profiling.bench.shape_bench`) in both states.
Writes one row per (model, what, layout, state): µs and the GPU's SM clock (MHz, read by
``torch.cuda.clock_rate`` where the driver reports it). Prints the hot/cold and layout ratios.
"""
from __future__ import annotations

import argparse
import csv
import time
from typing import Any, Callable

import torch

from executor.profiling.bench import shape_bench
from executor.profiling.ops import DT, closure
from executor.profiling.timing import gpu_time_us
from moesched.configs import load_configs


def gemm(layout: str, r: int, n: int, k: int, dt: torch.dtype, dev: torch.device) -> Callable[[], Any]:
    """One GEMM of r x n x k (2rnk FLOPs) in ``layout`` (``nt``: the profiler's own closure)."""
    if layout == "nt":
        return closure("gemm", (r, n, k), dt, dev)
    if layout == "nn":
        a, w = torch.randn(r, k, device=dev, dtype=dt), torch.randn(k, n, device=dev, dtype=dt)
        return lambda: a @ w
    dy, a = torch.randn(k, r, device=dev, dtype=dt), torch.randn(k, n, device=dev, dtype=dt)
    g = torch.zeros(r, n, device=dev, dtype=dt)  # gw[r, n] += dy.t()[r, k] @ a[k, n]: k is the reduction
    return lambda: g.addmm_(dy.t(), a)


def heat(seconds: float, dt: torch.dtype, dev: torch.device) -> None:
    """Back-to-back GEMMs in ``dt`` for about ``seconds`` of GPU time."""
    a = torch.randn(4096, 4096, device=dev, dtype=dt)
    f = lambda: a @ a  # noqa: E731
    one = gpu_time_us(f, dev, 3) * 1e-6
    for _ in range(max(1, int(seconds / one))):
        f()
    torch.cuda.synchronize(dev)


def clock_mhz(dev: torch.device) -> float:
    try:
        return float(torch.cuda.clock_rate(dev))
    except Exception:  # noqa: BLE001  (no NVML on the machine)
        return float("nan")


def timed(fn: Callable[[], Any], state: str, dt: torch.dtype, dev: torch.device, idle_s: float, heat_s: float
          ) -> tuple[float, float]:
    if state == "cold":
        torch.cuda.synchronize(dev)
        time.sleep(idle_s)
    else:
        heat(heat_s, dt, dev)
    us = gpu_time_us(fn, dev, 5)
    return us, clock_mhz(dev)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", required=True)
    ap.add_argument("--names", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--idle", type=float, default=1.0)
    ap.add_argument("--heat", type=float, default=0.3)
    a = ap.parse_args()
    dev = torch.device("cuda")
    models = {c.name: c.model for c in load_configs(a.configs)}
    rows = []
    for name in a.names.split(","):
        m = models[name]
        dt = DT[m.dtype]
        r = m.tokens * m.top_k // m.experts
        M, H = m.d_model, m.ffn_hidden
        shapes = [("fc1", "nt", (r, H, M)), ("fc1", "nn", (r, H, M)), ("fc2", "nt", (r, M, H)),
                  ("fc2", "nn", (r, M, H)), ("wgrad", "nt", (M, H, r)), ("wgrad", "tn", (M, H, r))]
        for state in ("cold", "hot", "cold", "hot"):
            for what, layout, (rr, n, k) in shapes:
                us, mhz = timed(gemm(layout, rr, n, k, dt, dev), state, dt, dev, a.idle, a.heat)
                rows.append((name, m.dtype, what, layout, state, round(us, 2), mhz, 2.0 * rr * n * k))
            for kind in ("expert_fwd", "expert_dx", "expert_dw"):
                fn, flops = shape_bench(m, kind, m.tokens, dev, 1)
                us, mhz = timed(fn, state, dt, dev, a.idle, a.heat)
                rows.append((name, m.dtype, kind, "task", state, round(us, 2), mhz, flops))
                fn = None
            torch.cuda.empty_cache()
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "dtype", "what", "layout", "state", "us", "sm_mhz", "flops"])
        w.writerows(rows)
    import pandas as pd
    d = pd.read_csv(a.out)
    t = d.groupby(["config", "what", "layout", "state"]).us.median().unstack("state")
    t["hot/cold"] = (t.hot / t.cold).round(3)
    print(t.round(1).to_string())
    g = d[d.layout != "task"].groupby(["config", "what", "layout"]).us.median().unstack("layout")
    print("layout over nt at the same shape:")
    print((g.div(g.nt, axis=0)).round(3).to_string())


if __name__ == "__main__":
    main()
