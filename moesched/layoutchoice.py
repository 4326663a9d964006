"""Choose the parallel layout of a model on a cluster: EP with all-to-alls (its EP
size and schedule by :func:`moesched.solve.layout.solve_layout`) against PPMoE's EP inside
TP (:mod:`moesched.layouts`) for every TP size that divides the node, with and without
sequence parallelism. Every candidate is checked against GPU memory
(:func:`moesched.layouts.layout_memory`); the fastest predicted step of those that fit wins.

Steps are compared on GPU costs, list-scheduled (the EP row: the solved schedule's
``step_us``; PPMoE rows: :func:`moesched.layoutsearch.search_priority` of :func:`moesched.layoutgraph.build`),
at the same global batch (a TP group of t ranks runs t micro-batches).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.kinds import A2A_KINDS, TP_COMM_KINDS
from moesched.knobs import Knobs
from moesched.layoutgraph import build
from moesched.layoutsearch import search_priority
from moesched.layouts import Layout, check_layout, layout_memory
from moesched.memory import GB, ZERO_STAGES, RankMemory, fit_problem, gpu_memory_bytes
from moesched.models import MoEModel
from moesched.plan import Plan, from_timeline
from moesched.profile import Profile
from moesched.sim import Timeline
from moesched.solve.layout import solve_layout


@dataclass
class LayoutOption:
    """One candidate: its layout, EP size, memory per rank (None when it does not divide),
    why it cannot run (None when it can), the predicted step (µs, GPU costs) and the busy
    time of rank 0 (µs) on all-to-alls, TP collectives and gradient all-reduces, and the
    :class:`moesched.plan.Plan` of its predicted order (None when it cannot run)."""

    layout: Layout
    ep: int
    memory: RankMemory | None = None
    problem: str | None = None
    step_us: float | None = None
    busy_us: dict[str, float] = field(default_factory=dict)
    plan: Plan | None = None

    def label(self) -> str:
        if self.layout.tp > 1:
            return self.layout.label()
        return f"EP {self.ep} (all-to-all)" if self.ep else "EP (all-to-all)"


def busy_by_group(tl: Timeline) -> dict[str, float]:
    """Rank 0's busy µs on all-to-alls ("a2a"), TP collectives ("tp") and gradients ("grad")."""
    d = tl.df[tl.df["rank"] == 0]
    dur = d["end_us"] - d["start_us"]
    return {"a2a": float(dur[d["kind"].isin(A2A_KINDS)].sum()), "tp": float(dur[d["kind"].isin(TP_COMM_KINDS)].sum()),
            "grad": float(dur[d["kind"] == "grad_ar"].sum())}


def tp_sizes(cluster: Cluster) -> list[int]:
    """TP sizes to consider: the divisors > 1 of the GPUs per node (a TP group stays in a node)."""
    return [t for t in range(2, cluster.gpus_per_node + 1) if cluster.gpus_per_node % t == 0]


def ep_option(model: MoEModel, cluster: Cluster, profile: Profile, zero: int, time_limit_s: float | None) -> LayoutOption:
    """Today's layout: the EP size and schedule the solver chooses (or why none fits)."""
    try:
        lay = solve_layout(model, cluster, profile, time_limit_s, zero=zero)
    except MoeschedError as e:
        return LayoutOption(Layout(1), cluster.ep or 0, problem=str(e))
    c, res = lay.cluster, lay.result
    plan = from_timeline("moesched", model, c, res.schedule.knobs, res.evaluation.timeline, profile,
                         {"priority": res.schedule.notes.get("priority"), "source": res.schedule.notes.get("source")})
    return LayoutOption(Layout(1), c.ep_size, lay.chosen.memory, None, res.step_us,
                        busy_by_group(res.evaluation.timeline), plan)


def ppmoe_option(model: MoEModel, cluster: Cluster, profile: Profile, layout: Layout, zero: int) -> LayoutOption:
    """A PPMoE layout: why it cannot run (does not divide, does not fit, a collective the
    profile does not price), else its simulated step."""
    opt = LayoutOption(layout, layout.tp)
    try:
        check_layout(model, cluster, layout)
        opt.memory = layout_memory(model, cluster, layout, zero)
        opt.problem = fit_problem(opt.memory, gpu_memory_bytes(profile.hardware))
        if opt.problem:
            return opt
        tl, prio = search_priority(build(model, cluster, profile, layout))
    except MoeschedError as e:
        opt.problem = str(e)
        return opt
    opt.step_us, opt.busy_us = tl.makespan_us, busy_by_group(tl)
    opt.plan = from_timeline("ppmoe", model, cluster, Knobs.uniform(model.layers, 1), tl, profile,
                             {"priority": prio, "source": "search:layout"}, layout=layout)
    return opt


def compare_layouts(model: MoEModel, cluster: Cluster, profile: Profile, zero: int = 0,
                    time_limit_s: float | None = None) -> tuple[list[LayoutOption], LayoutOption]:
    """Every candidate (EP first, then PPMoE by TP size, plain then sequence parallel) and
    the chosen one (fastest step among those that run; the first of equals). Raises
    MoeschedError when none can run."""
    opts = [ep_option(model, cluster, profile, zero, time_limit_s)]
    for t in tp_sizes(cluster):
        for sp in (False, True):
            opts.append(ppmoe_option(model, cluster, profile, Layout(t, sp), zero))
    try:
        return opts, fastest(opts, "layout", model, cluster)
    except MoeschedError as e:
        raise MoeschedError(f"{e}{zero_hint(model, cluster, profile, zero)}") from None


def fitting_ppmoe(model: MoEModel, cluster: Cluster, profile: Profile, zeros: tuple[int, ...]
                  ) -> tuple[int, Layout, RankMemory] | None:
    """The first ZeRO stage of ``zeros`` at which a PPMoE layout of ``cluster`` fits GPU
    memory, with the first such layout (by TP size, plain before sequence parallel) and its
    memory per rank; None when none fits at any of them."""
    capacity = gpu_memory_bytes(profile.hardware)
    for z in zeros:
        for layout in (Layout(t, sp) for t in tp_sizes(cluster) for sp in (False, True)):
            try:
                check_layout(model, cluster, layout)
                mem = layout_memory(model, cluster, layout, z)
            except MoeschedError:
                continue
            if fit_problem(mem, capacity) is None:
                return z, layout, mem
    return None


def zero_hint(model: MoEModel, cluster: Cluster, profile: Profile, zero: int) -> str:
    """"; with --zero Z, LAYOUT fits (N GB/rank)": the lowest ZeRO stage above ``zero`` at
    which a PPMoE layout of ``cluster`` fits GPU memory, else ""."""
    hit = fitting_ppmoe(model, cluster, profile, tuple(z for z in ZERO_STAGES if z > zero))
    if hit is None:
        return ""
    z, layout, mem = hit
    return f"; with --zero {z}, {layout.label()} fits ({mem.total_bytes / GB:.1f} GB/rank)"


def layouts_hint(model: MoEModel, cluster: Cluster, profile: Profile, zero: int) -> str:
    """For a model no EP size fits: "; on C: `moesched layouts --cluster C [--zero Z]` fits
    LAYOUT (N GB/rank)" when a PPMoE layout fits ``cluster`` at ``zero`` or a higher stage,
    else ""."""
    hit = fitting_ppmoe(model, cluster, profile, tuple(z for z in ZERO_STAGES if z >= zero))
    if hit is None:
        return ""
    z, layout, mem = hit
    flag = f" --zero {z}" if z else ""
    return (f"; on {cluster.label()}: `moesched layouts --cluster {cluster.label()}{flag}` fits {layout.label()} "
            f"({mem.total_bytes / GB:.1f} GB/rank)")


def fastest(opts: list[Any], noun: str, model: MoEModel, cluster: Cluster) -> Any:
    """The candidate of ``opts`` (each with ``step_us``, ``problem`` and ``label()``) with the
    fastest step among those that run; MoeschedError naming every candidate's problem when
    none runs."""
    ok = [o for o in opts if o.step_us is not None]
    if not ok:
        raise MoeschedError(f"no {noun} of {model.name} runs on {cluster.label()}: "
                            + "; ".join(f"{o.label()}: {o.problem}" for o in opts))
    return min(ok, key=lambda o: o.step_us)


def reason(opts: list[LayoutOption], chosen: LayoutOption) -> str:
    """Why ``chosen`` wins: its step against the next best, and the communication that differs."""
    ok = sorted((o for o in opts if o.step_us is not None), key=lambda o: o.step_us)  # type: ignore[arg-type,return-value]
    if len(ok) < 2:
        return f"{chosen.label()} is the only layout that runs"
    nxt = ok[1] if ok[0] is chosen else ok[0]
    assert chosen.step_us is not None and nxt.step_us is not None

    def comm(o: LayoutOption) -> str:
        b = o.busy_us
        return (f"all-to-all {b.get('a2a', 0) / 1e3:.1f} ms, TP collectives {b.get('tp', 0) / 1e3:.1f} ms, "
                f"gradient all-reduce {b.get('grad', 0) / 1e3:.1f} ms")
    return (f"{chosen.label()} ({comm(chosen)}) is {nxt.step_us / chosen.step_us:.2f}x faster than "
            f"{nxt.label()} ({comm(nxt)})")
