"""Host time of the executor's own functions, inclusive, per step: which bookkeeping the
host spends its time on (perf_counter around each wrapped function; nested calls count in
both). Machine: any CUDA host (meant for nvidia-h200; one rank or more), under torchrun,
from the repository root::

    PYTHONPATH=. torchrun --nproc_per_node=1 benchmarks/host_sections.py --profile profiles/h200x4-nvlink.json \
      --configs docs/validation_configs.json --only gpt2xl-4L --schedules vanilla,flowmoe --cluster 1x1 --out $OUT/s.json

Writes a JSON list (rank 0): per (config, schedule) the median step (ms) with and without
the wrappers, and per wrapped function its calls and µs per step.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from collections import defaultdict

import torch
import torch.distributed as dist

from host_breakdown import setup  # benchmarks/ is on sys.path when run as a script

from executor import comm_tasks, graphs, issue, state, tasks
from executor.layers import TORCH_DTYPES, MoEModule, make_batch
from executor.runtime import PlannedStep
from executor.validate import make_plan
from moesched.plan import Plan

ACC: dict = defaultdict(lambda: [0, 0.0])
ON = [False]


def wrap(owner: object, name: str, label: str | None = None) -> None:
    """Replace ``owner.name`` by a timed version (:func:`_timed`)."""
    label = label or f"{getattr(owner, '__name__', type(owner).__name__)}.{name}"
    setattr(owner, name, _timed(getattr(owner, name), label))


def install() -> None:
    for n in ("merge", "h2d", "_dispatch_counts", "_dispatch_rows", "_exchange_counts", "_resolve_counts",
              "keep_mask", "_mark_ready", "_saved", "_offs", "experts_fwd", "experts_dx", "experts_dw", "_a2a",
              "a2a", "hop_plan", "new_layer_states", "ffn_fwd", "ffn_dx", "ffn_dw"):
        for owner in (tasks, comm_tasks):
            if hasattr(owner, n):
                wrap(owner, n)
    for d in (tasks.COMPUTE, comm_tasks.A2A):
        for kind, f in list(d.items()):
            d[kind] = _timed(f, f"task.{kind}")
    comm_tasks.grad_ar = _timed(comm_tasks.grad_ar, "task.grad_ar")
    for n in ("expert_chunk", "expert_bwd", "matrix_fwd", "matrix_bwd", "ready"):
        wrap(state.LayerState, n, f"LayerState.{n}")
    wrap(state, "ranges")
    wrap(state.LayerState, "reset", "LayerState.reset") if hasattr(state.LayerState, "reset") else None
    try:  # the routing bookkeeping and staging of later executors
        from executor import route, staging
        for n in ("route_fwd", "rows_bwd"):
            wrap(route, n)
            wrap(route.RouteGraphs, n, f"RouteGraphs.{n}")
        wrap(staging.Staging, "put", "Staging.put")
        wrap(tasks.Ctx, "h2d", "Ctx.h2d")
    except ImportError:
        pass
    wrap(torch.autograd, "backward", "torch.autograd.backward")
    wrap(torch.cuda.Event, "record", "Event.record")
    wrap(torch.Tensor, "pin_memory", "Tensor.pin_memory")
    wrap(issue, "issue_cuda")
    wrap(PlannedStep, "_ctx")
    if hasattr(graphs, "GraphedPiece"):  # the current executor: graphed pieces are objects (older ones: dicts)
        wrap(graphs.GraphedPiece, "forward", "graphed_attention")
        wrap(graphs.GraphedPiece, "backward", "graphed_attention_bwd")
        return
    orig = graphs.capture

    def capture(*a, **k):
        g = orig(*a, **k)
        return None if g is None else {key: _timed(fn, "graphed_attention") for key, fn in g.items()}
    graphs.capture = capture


def _timed(f, label):
    @functools.wraps(f)
    def w(*a, **k):
        if not ON[0]:
            return f(*a, **k)
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            r = ACC[label]
            r[0] += 1
            r[1] += time.perf_counter() - t
    return w


def main() -> None:
    args, rank, dev, cluster, ppath, cfgs = setup(argparse.ArgumentParser(), steps=8, scratch="/tmp")
    cuda = dev.type == "cuda"
    install()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out = []
    for c in cfgs:
        m = c.model
        dtype = TORCH_DTYPES[m.dtype] if cuda else torch.float32
        for sched in args.schedules.split(","):
            plan = Plan.from_dict(make_plan((ppath, m.to_dict(), cluster.to_dict(), sched)))
            module = MoEModule(m, ep=cluster.ep_size, ep_rank=rank % cluster.ep_size, seed=0, device=dev, dtype=dtype)
            step = PlannedStep(module, plan)
            x, t = make_batch(m, rank, 0, device=dev, dtype=dtype)

            def run(n: int, step: PlannedStep = step) -> list[float]:
                ts = []
                for _ in range(n):
                    dist.barrier()
                    sync()
                    t0 = time.perf_counter()
                    step(x, t)
                    sync()
                    ts.append((time.perf_counter() - t0) * 1e3)
                return ts
            run(3)
            plain = run(args.steps)
            ACC.clear()
            ON[0] = True
            wrapped = run(args.steps)
            ON[0] = False
            host = step.timeline().host
            if rank == 0:
                n = args.steps
                rec = {"config": c.name, "schedule": sched, "step_ms": round(statistics.median(plain), 3),
                       "step_ms_wrapped": round(statistics.median(wrapped), 3),
                       "host_issue_ms": round(float((host.end_us - host.start_us).sum()) / 1e3, 3),
                       "functions": {k: {"calls": v[0] / n, "us": round(v[1] * 1e6 / n, 1)}
                                     for k, v in sorted(ACC.items(), key=lambda kv: -kv[1][1])}}
                out.append(rec)
                print(f"== {c.name} {sched}: step {rec['step_ms']} ms (wrapped {rec['step_ms_wrapped']}), "
                      f"host issue {rec['host_issue_ms']} ms", flush=True)
                for k, v in rec["functions"].items():
                    print(f"   {k:34s} {v['calls']:6.1f} calls {v['us']:9.1f} us/step", flush=True)
            del step, module
            if cuda:
                torch.cuda.empty_cache()
    if rank == 0:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, args.out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
