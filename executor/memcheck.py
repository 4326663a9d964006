"""Measured peak memory of one planned step on CPU, for checking the memory model
(:mod:`moesched.memory`) against the executor.

CPU has no ``torch.cuda.max_memory_allocated``; the profiler's memory events carry the CPU
allocator's running total instead (``torch.profiler.profile(profile_memory=True)``: every
allocation and free of c10's CPU allocator, "Total Allocated" in bytes). The module, the
plan's step state, the batch and one step are all made inside the profiled region, so the
largest total is the rank's peak of live tensor bytes: parameters, gradient buffers,
everything kept for backward, and the transient tensors of the moment.

    python -m executor.memcheck   # one line of JSON per case (world size 1, gloo)
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile, record_function

from executor.layers import MoEModule, make_batch
from executor.runtime import PlannedStep
from moesched.plan import Plan


def _totals(trace: Path) -> list[tuple[float, int]]:
    """(timestamp µs, bytes allocated since the profile began) of every CPU allocator event
    in a trace. The allocator's running total is process-wide and misses frees made while no
    profiler listens, so it is taken relative to the total before the first event."""
    events = sorted((e for e in json.loads(trace.read_text())["traceEvents"]
                     if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0), key=lambda e: e["ts"])
    if not events:
        return []
    base = int(events[0]["args"]["Total Allocated"]) - int(events[0]["args"]["Bytes"])
    return [(float(e["ts"]), int(e["args"]["Total Allocated"]) - base) for e in events]


def _span(trace: Path, name: str) -> tuple[float, float]:
    """Start and end (µs) of the record_function range ``name``."""
    for e in json.loads(trace.read_text())["traceEvents"]:
        if e.get("name") == name and e.get("ph") == "X":
            return float(e["ts"]), float(e["ts"]) + float(e["dur"])
    raise RuntimeError(f"no range {name!r} in the profile")


def measured_peak_bytes(plan: Plan, seed: int = 0) -> dict[str, int]:
    """Run one step of ``plan`` (world size 1: torch.distributed initialised) on CPU in fp32
    and return bytes: ``before_step`` (module, step state and batch allocated), ``peak``
    (largest total during the step) and ``after_step``."""
    m = plan.model
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        module = MoEModule(m, ep=1, ep_rank=0, seed=seed)
        step = PlannedStep(module, plan, issue="single")
        x, t = make_batch(m, 0, seed)
        with record_function("memcheck.step"):
            step(x, t)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trace.json"
        prof.export_chrome_trace(str(path))
        totals, (a, b) = _totals(path), _span(path, "memcheck.step")
    before = next((v for ts, v in reversed(totals) if ts < a), 0)
    during = [v for ts, v in totals if a <= ts <= b]
    after = next((v for ts, v in reversed(totals) if ts <= b), before)
    return {"before_step": before, "peak": max(during + [before]), "after_step": after}


#: CPU-sized models of the check (tiny_model fields): GPT experts; SwiGLU with a shared
#: expert; top-1 over 8 experts with grouped-query attention.
CASES = (dict(d_model=64, seq_len=64, micro_batch=4, ffn_hidden=128, layers=4),
         dict(d_model=128, seq_len=128, micro_batch=2, ffn_hidden=256, layers=2, shared_experts=1,
              expert_kind="swiglu"),
         dict(d_model=96, seq_len=32, micro_batch=8, ffn_hidden=192, layers=3, experts=8, top_k=1, heads=4,
              kv_heads=2))


def compare(case: dict, degree: int = 1) -> dict:
    """Measured peak of one step of the tiny model ``case`` (plan in creation order, every
    layer in ``degree`` token chunks, world size 1)
    beside the memory model's parameters + gradients + activations + all-to-all buffers
    (the executor allocates no optimizer state), bytes; ``error`` = model / measured - 1."""
    from moesched.cluster import Cluster
    from moesched.knobs import Knobs
    from moesched.memory import rank_memory
    from executor.testplans import make_plan, tiny_model

    m = tiny_model(**case)
    got = measured_peak_bytes(make_plan(m, Cluster(1, 1), Knobs.uniform(m.layers, degree)))
    mem = rank_memory(m, Cluster(1, 1), 0)
    model = mem.params_bytes + mem.grads_bytes + mem.activations_bytes + mem.a2a_bytes
    return {**got, "model": model, "error": model / got["peak"] - 1.0}


def main() -> int:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        for case in CASES:
            for degree in (1, 2):
                print(json.dumps({**case, "degree": degree, **compare(case, degree)}))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
