"""The layout search: the expert-parallel size EP (and so expert-DP = world / EP).

Candidates are the divisors of the world size that divide the expert count. Each is
checked against GPU memory (:mod:`moesched.memory`); every one that fits is solved
(:func:`moesched.solve.api.solve`, the time limit split evenly) and the fastest predicted
step wins. A cluster given with ``/epN`` fixes EP: only that candidate is solved.

What EP trades: a larger EP holds fewer experts per rank (less memory, smaller expert
gradient all-reduce over world/EP ranks) but sends all-to-all rows to more ranks, and an
EP group larger than a node sends them over the inter-node tier; EP = 1 has no
all-to-all at all and all-reduces every expert's gradients over the world.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from moesched.cluster import Cluster
from moesched.errors import MemoryRefusal
from moesched.memory import (GB, RankMemory, fits_nowhere, gpu_memory_bytes, memory_problem, rank_memory,
                             remedies)
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.solve.api import SolveResult, solve

A2A_KINDS = ("dispatch", "combine", "combine_bwd", "dispatch_bwd")


@dataclass
class LayoutRow:
    """One EP candidate: its cluster (``ep`` set), per-rank memory, why it cannot run (None
    when it can) and, when solved, the result and the busy time (µs, rank 0, plan as
    list-scheduled) of its all-to-alls and of its gradient all-reduces."""

    cluster: Cluster
    memory: RankMemory
    problem: str | None = None
    result: SolveResult | None = None
    a2a_us: float = 0.0
    grad_us: float = 0.0

    @property
    def ep(self) -> int:
        return self.cluster.ep_size

    def placement(self) -> str:
        """Where the EP group's all-to-all runs: inside one node or across nodes."""
        c = self.cluster
        if self.ep == 1:
            return "one rank (local)"
        return "inside a node" if c.nodes == 1 or self.ep <= c.gpus_per_node else \
            f"across {-(-self.ep // c.gpus_per_node)} nodes"


@dataclass
class LayoutResult:
    """The chosen layout's solve and every candidate's row (EP ascending)."""

    chosen: LayoutRow
    rows: list[LayoutRow]

    @property
    def result(self) -> SolveResult:
        assert self.chosen.result is not None
        return self.chosen.result

    @property
    def cluster(self) -> Cluster:
        return self.chosen.cluster

    def reason(self) -> str:
        """Why the chosen EP wins: its step against the next best, and what differs."""
        c = self.chosen
        solved = sorted((r for r in self.rows if r.result is not None), key=lambda r: r.result.executed_us)
        if len(solved) < 2:
            others = [r for r in self.rows if r is not c]
            if not others:
                return f"EP {c.ep} is the only candidate ({c.placement()})"
            return f"EP {c.ep} is the only one that fits in memory ({c.placement()})"
        nxt = solved[1]
        assert c.result is not None and nxt.result is not None
        ratio = nxt.result.executed_us / c.result.executed_us
        return (f"EP {c.ep} ({c.placement()}; all-to-all {c.a2a_us / 1e3:.2f} ms, gradient all-reduce "
                f"{c.grad_us / 1e3:.2f} ms) is {ratio:.2f}x faster than EP {nxt.ep} ({nxt.placement()}; "
                f"all-to-all {nxt.a2a_us / 1e3:.2f} ms, gradient all-reduce {nxt.grad_us / 1e3:.2f} ms)")


def ep_candidates(model: MoEModel, cluster: Cluster) -> list[int]:
    """EP sizes to consider: ``cluster.ep`` when fixed, else every divisor of the world
    size that divides the expert count (ascending)."""
    if cluster.ep is not None:
        cluster.check_model(model.experts)
        return [cluster.ep]
    return [d for d in range(1, cluster.world + 1) if cluster.world % d == 0 and model.experts % d == 0]


def layout_rows(model: MoEModel, cluster: Cluster, capacity_bytes: int, zero: int = 0) -> list[LayoutRow]:
    """One row per EP candidate with its memory and, when it does not fit, why."""
    rows = []
    for ep in ep_candidates(model, cluster):
        c = replace(cluster, ep=ep)
        rows.append(LayoutRow(c, rank_memory(model, c, zero), memory_problem(model, c, capacity_bytes, zero)))
    return rows


def _refusal(model: MoEModel, cluster: Cluster, rows: list[LayoutRow], capacity_bytes: int, zero: int) -> str:
    nowhere = fits_nowhere(model, capacity_bytes, zero)
    if nowhere is not None:
        return nowhere
    best = min(rows, key=lambda r: r.memory.total_bytes)
    eps = f"EP {rows[0].ep}" if len(rows) == 1 else f"any EP size ({', '.join(str(r.ep) for r in rows)})"
    return (f"{model.name} does not fit {cluster.label()} ({capacity_bytes / GB:.3g} GB/GPU) at {eps}, "
            f"ZeRO-{zero}: at EP {best.ep} a rank {best.problem}; "
            f"try {remedies(model, best.cluster, capacity_bytes, zero)}")


def _busy(res: SolveResult) -> tuple[float, float]:
    df = res.evaluation.timeline.df
    d = df[df["rank"] == 0]
    dur = d["end_us"] - d["start_us"]
    return float(dur[d["kind"].isin(A2A_KINDS)].sum()), float(dur[d["kind"] == "grad_ar"].sum())


def solve_layout(model: MoEModel, cluster: Cluster, profile: Profile, time_limit_s: float | None = None,
                 progress: Callable[[str], None] | None = None, zero: int = 0) -> LayoutResult:
    """Choose EP (when ``cluster.ep`` is None) and solve the schedule on it: every EP
    candidate that fits in memory is solved, the fastest predicted step (as executed) wins,
    the smaller EP among equals. Raises MoeschedError when no candidate fits (one line
    naming the binding memory term) or the experts do not divide over a fixed EP."""
    capacity = gpu_memory_bytes(profile.hardware)
    rows = layout_rows(model, cluster, capacity, zero)
    ok = [r for r in rows if r.problem is None]
    if not ok:
        raise MemoryRefusal(_refusal(model, cluster, rows, capacity, zero))
    share = None if time_limit_s is None else time_limit_s / len(ok)
    for r in ok:
        if progress:
            progress(f"layout EP {r.ep} (expert-DP {r.cluster.expert_dp}, {r.placement()})")
        r.result = solve(model, r.cluster, profile, share, progress, zero=zero)
        r.a2a_us, r.grad_us = _busy(r.result)
    chosen = min(ok, key=lambda r: (r.result.executed_us, r.ep))  # type: ignore[union-attr]
    return LayoutResult(chosen, rows)
