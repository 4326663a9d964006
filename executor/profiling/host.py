"""Measure the host issue cost of every task kind (the host model of :mod:`moesched.host`).

The executor is host-bound at the validation shapes (``docs/validating.md``): how long
the host takes to issue a task matters as much as how long the GPU takes to run it, and it
changes with the regime (attention backward: 2.0 ms of host time on NVLink, 5.0 ms through
host memory). So the profiler measures it the only faithful way, by running the executor:
for each model shape, a few real training steps (:class:`executor.runtime.PlannedStep`)
of plans of up to four layers at pipeline degree 1, 2 (attention whole or chunked) and 4
(chunked), gradients in 4 MiB chunks when r > 1, and of one layer at degree 1, one step of
each plan per pass over all of them (:func:`measure_host`). Every task's
host interval, minus the time it blocked on routing counts, is one sample (shape, kind, x,
r, µs): x = the task's work (FLOPs; bytes of a collective; :func:`moesched.host.host_features`),
r = its layer's degree in its phase; every step adds its setup and finish
(:func:`step_samples`, x = the parameter bytes of one rank). The lag
is the median delay from a compute task's issue start to its GPU
start, over tasks that did not wait for the GPU (those starting within 200 µs). The GPU
times of compute tasks issued in full with no collective beside them calibrate the
micro-benchmarks' compute costs (:func:`insitu_sample`, :mod:`moesched.costs.calibrate`).

Runs on every rank, with the same plans in the same order; returns this rank's samples.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.distributed as dist

from executor.layers import TORCH_DTYPES, MoEModule, make_batch
from executor.profiling.timing import gc_quiet
from executor.runtime import PlannedStep
from moesched.costs.calibrate import INSITU_KINDS
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.graph import build
from moesched.host import host_features, step_x
from moesched.memory import param_counts
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.plan import Plan, from_timeline
from moesched.sim import simulate

#: (degree, attention chunked) of the calibration plans.
VARIANTS = ((1, False), (2, False), (2, True), (4, True))
MAX_LAYERS = 4
GRAD_CHUNK_BYTES = 4 * 2**20
LAG_WINDOW_US = 200.0


def calibration_plans(m: MoEModel, cluster: Cluster) -> list[Plan]:
    """Plans of ``m`` (at most MAX_LAYERS layers) for each of VARIANTS the model's tokens
    allow, in creation order (the order is not what is measured, the per-task issue cost is),
    then the degree-1 plan of one layer (the step's setup and finish against its layers)."""
    mm = m.with_layers(min(m.layers, MAX_LAYERS))
    one = replace(m, layers=1, dense_layers=(), dense_ffn_hidden=None)  # one MoE layer
    plans = []
    variants = [(mm, r, at) for r, at in VARIANTS] + ([(one, 1, False)] if mm.layers > 1 else [])
    for model, r, at in variants:
        knobs = Knobs.uniform(model.layers, r, at_chunked=at, grad_chunk_bytes=GRAD_CHUNK_BYTES if r > 1 else None)
        try:
            g = build(model, cluster, None, knobs)
        except MoeschedError:
            continue  # degree does not divide the tokens
        plans.append(from_timeline(f"host-r{r}-L{model.layers}", model, cluster, knobs, simulate(g, strict=False)))
    return plans


def step_samples(shape: str, plan: Plan, tl: Any) -> list[tuple[str, str, float, int, float]]:
    """Host samples (shape, kind, x, 1, µs) of the step around its tasks (x: the parameter
    bytes of one rank, :func:`moesched.host.step_x`), from a
    measured timeline's meta (:meth:`executor.runtime.PlannedStep.timeline`): setup = from
    the call to the first task (host preparation or the GPU's zeroing of the gradient
    buffers, whichever is longer); finish = the rest of the call after the last task."""
    meta = tl.meta
    setup = max(float(meta["setup_us"]), float(meta.get("gpu_setup_us", 0.0)))
    end = float(tl.df["end_us"].max()) if len(tl.df) else 0.0
    finish = max(float(meta["call_us"]) - setup - end, 0.0)
    m = plan.model
    x = step_x(m.layers, sum(param_counts(m, plan.cluster.ep_size)) * m.bytes_per_elem, "work")
    return [(shape, "step_setup", x, 1, setup), (shape, "step_finish", x, 1, finish)]


@dataclass
class HostSamples:
    """What the calibration steps measured on one rank (see :func:`measure_host`)."""

    samples: list[tuple[str, str, float, int, float]] = field(default_factory=list)  # shape, kind, x, r, µs
    lags_us: list[float] = field(default_factory=list)
    a2a: dict[tuple, tuple[str, str, float, float]] = field(default_factory=dict)   # shape, scope, bytes, µs
    compute: list[tuple[str, str, float, float]] = field(default_factory=list)      # shape, kind, FLOPs, GPU µs
    step_us: list[tuple[str, int, int, float]] = field(default_factory=list)        # shape, plan, pass, call µs
    probes_us: list[float] = field(default_factory=list)                            # host probe per pass, µs


def insitu_sample(kind: str, serial: bool) -> bool:
    """Whether a compute task of ``kind`` in a plan (``serial``: pipeline degree 1) may
    calibrate its kind's compute cost: every in-situ kind in every plan, except expert_dx
    outside degree 1 (its first chunk also copies the activations the forward chunks saved,
    which :func:`moesched.costs.calibrate.saved_copy_us` charges apart; the degree-1 factor
    carries the one-chunk copy). The chunked plans give the samples a degree-1 step cannot:
    there expert_fwd follows the dispatch's wait for routing counts and expert_dw runs beside
    the backward dispatch, while a later chunk's are often issued in full and alone."""
    return kind in INSITU_KINDS and (serial or kind != "expert_dx")


def _add_step(out: HostSamples, shape: str, key: tuple, plan: Plan, nodes: Any, tl: Any, cuda: bool) -> None:
    """The samples of one measured step (timeline ``tl`` of ``plan``; ``key`` = (plan index,
    step index)) into ``out``: step setup and finish, every task's host issue time, the lag
    of compute tasks (CUDA), the flat all-to-alls but the forward dispatch and the compute
    tasks issued in full with no collective beside them (:func:`insitu_sample`)."""
    out.samples += step_samples(shape, plan, tl)
    df = tl.df
    by_task = df.set_index("task")
    gpu, gpu_end = by_task["start_us"].to_dict(), by_task["end_us"].to_dict()
    for task, s, e in zip(df["task"], df["start_us"], df["end_us"]):
        a = nodes[task]
        if a.get("op") == "all_to_all" and a.get("hop") is None and a["kind"] != "dispatch":
            out.a2a[(shape, *key, task)] = (shape, a["scope"], float(a["work"]), float(e - s))
    links = [(s, e) for res, s, e in zip(df["resource"], df["start_us"], df["end_us"])
             if res != "compute"]  # a compute task beside one is slowed by it (interference)
    serial = set(plan.knobs.r_fwd + plan.knobs.r_bwd) == {1}  # degree 1: calibrates compute
    h = tl.host
    for task, s, e, w in zip(h["task"], h["start_us"], h["end_us"], h["wait_us"]):
        a = nodes[task]
        x, r = host_features(a["kind"], a, plan.knobs)
        out.samples.append((shape, a["kind"], x, r, max(float(e - s - w), 0.0)))
        if not cuda or a["resource"] != "compute":
            continue
        g0, g1 = gpu[task], gpu_end[task]
        if 0.0 <= g0 - s <= LAG_WINDOW_US:
            out.lags_us.append(float(g0 - s))
        if insitu_sample(a["kind"], serial) and e <= g0 and not any(
                ls < g1 and g0 < le for ls, le in links):  # issued in full, nothing beside it
            out.compute.append((shape, a["kind"], float(a["work"]), float(g1 - g0)))


def measure_host(models: list[MoEModel], cluster: Cluster, rank: int, device: torch.device,
                 steps: int = 3, warmup: int = 2, tick: Callable[[], None] | None = None,
                 probe: Callable[[], float] | None = None) -> HostSamples:
    """This rank's samples of the calibration steps, each model in the dtype it trains in
    (its own on a GPU, fp32 on a CPU, as validate and executor.run); see the module docstring.
    The ``steps`` timed steps of each plan come from as many interleaved passes over every
    plan of every model (a fresh module and ``warmup`` untimed steps per pass), so that a
    drift of the host's speed, which on lent machines moves 1.4x within seconds
    (``docs/validating.md``), spreads over every shape alike rather than setting one shape's
    costs; ``probe`` (the host probe, µs) is taken before each pass into ``probes_us``. Compute:
    (shape key, kind, FLOPs, GPU µs) of the compute tasks of
    :data:`moesched.costs.calibrate.INSITU_KINDS` in the degree-1 plan that the host had
    issued in full before the GPU started them (GPU time not stretched by the host) and that
    no collective ran beside (not slowed by interference, which the profile prices apart:
    in such a plan expert_dw runs beside dispatch_bwd and the shared expert beside the
    all-to-alls). All-to-alls: {(shape, plan, step, task): (shape key, scope, bytes,
    µs)}, the measured duration on this rank of each flat all-to-all but the forward dispatch
    (whose measured interval also holds the host's wait for the routing counts, which the
    host model prices), including its wait for ranks that issued it later
    (:func:`a2a_samples`)."""
    out = HostSamples()
    jobs = [(m, pi, plan) for m in models for pi, plan in enumerate(calibration_plans(m, cluster))]
    for p in range(steps):
        if probe is not None:
            out.probes_us.append(probe())
        for m, pi, plan in jobs:
            _timed_step(out, m, pi, plan, p, rank, device, warmup)
            if tick:
                tick()
    return out


def _timed_step(out: HostSamples, m: MoEModel, pi: int, plan: Plan, p: int, rank: int, device: torch.device,
                warmup: int) -> None:
    """One pass over ``plan`` (plan ``pi`` of model ``m``, pass ``p``): a fresh module,
    ``warmup`` untimed steps, one timed step whose samples go into ``out`` (:func:`_add_step`)."""
    ep = plan.cluster.ep_size
    dtype = TORCH_DTYPES[m.dtype] if device.type == "cuda" else torch.float32
    module = MoEModule(plan.model, ep=ep, ep_rank=rank % ep, seed=0, device=device, dtype=dtype)
    step = PlannedStep(module, plan)
    batch, target = make_batch(plan.model, rank, 0, device=device, dtype=dtype)
    with gc_quiet():  # no collection inside the timed steps
        for i in range(warmup + 1):
            dist.barrier(group=step.groups.world_meta)
            step(batch, target)
        tl = step.timeline()
        _add_step(out, m.shape_key(), (pi, p), plan, step.graph.nodes, tl, device.type == "cuda")
    out.step_us.append((m.shape_key(), pi, p, float(tl.meta["call_us"])))
    del step, module
    if device.type == "cuda":
        torch.cuda.empty_cache()


def a2a_samples(per_rank: list[dict[tuple, tuple[str, str, float, float]]]
                ) -> list[tuple[str, str, float, float, float]]:
    """(shape key, scope, bytes, smallest µs, median µs over ranks) per all-to-all of the
    calibration steps. The smallest is the rank that issued it last: the transfer alone. The
    median is what a typical rank sees, the wait for the last rank included: a simulation
    of one rank standing for all (ranks alike) needs that wait, because in a real step every
    collective waits for the slowest rank of the moment (:func:`moesched.costs.calibrate.with_host`)."""
    keys = set.intersection(*(set(d) for d in per_rank)) if per_rank else set()
    out = []
    for k in sorted(keys, key=str):
        shape, scope, nbytes, _ = per_rank[0][k]
        ts = [d[k][3] for d in per_rank]
        out.append((shape, scope, nbytes, min(ts), float(statistics.median(ts))))
    return out


def pass_spread(step_us: list[tuple[str, int, int, float]]) -> dict[str, float]:
    """How much the moment of a calibration step moves its duration: per (shape, plan) and
    rank-pooled, the range of its passes' step times (call µs) over their median, %; the mean
    and max over plans (what one shape's host costs would carry if measured at one moment)."""
    by: dict[tuple[str, int], list[float]] = {}
    for shape, pi, _, us in step_us:
        by.setdefault((shape, pi), []).append(us)
    spreads = [(max(v) - min(v)) / statistics.median(v) * 100 for v in by.values() if len(v) > 1]
    if not spreads:
        return {}
    return {"mean": round(statistics.mean(spreads), 2), "max": round(max(spreads), 2)}


def lag_us(lags: list[float]) -> float:
    """The host-to-GPU lag, µs: median of the samples (0 without any, e.g. on CPU)."""
    return float(statistics.median(lags)) if lags else 0.0


def summary(samples: list[tuple[str, str, float, int, float]]) -> dict[str, Any]:
    """Median host µs per kind (for the profiler's log)."""
    by: dict[str, list[float]] = {}
    for _, kind, _, _, us in samples:
        by.setdefault(kind, []).append(us)
    return {k: round(statistics.median(v), 1) for k, v in sorted(by.items())}
