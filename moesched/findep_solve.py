"""Solvers of DEP inference schedules (:mod:`moesched.findep`): FinDEP's Algorithm 1, the
PPPipe and naive-DEP baselines, and moesched's own search over attention-group orders.

All take ``times(m_a, r2) -> TaskTimes`` (ms; the paper's fitted lines via
:func:`paper_times`, or a profile's prices via :func:`moesched.findep_profile.profile_times`),
the layers T, the memory bound M_max (r1 m_a <= M_max) and return a :class:`DepResult`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

from moesched.errors import MoeschedError
from moesched.findep import (DepConfig, DepCosts, DepModel, Schedule, TaskTimes, ag_sequence,
                             closed_form_ms, makespan_ms, task_times, tokens_per_expert)

Times = Callable[[int, int], TaskTimes]
#: Most expert-side chunks searched (the paper's r2 stays in the tens).
R2_MAX = 64
#: Largest r1 at which Algorithm 1 also tries AASS (evaluated, not closed-form): with more
#: micro-batches the orders differ only in the pipeline's fill, under 1/64 of a layer.
AASS_MAX_R1 = 64
#: MegaScale-Infer's cap on PPPipe's micro-batches (N_m = 4: more hurt GEMM efficiency).
PPPIPE_MAX_MICROBATCHES = 4


@dataclass(frozen=True)
class DepResult:
    """A solved schedule: its config, makespan (ms), samples per attention GPU and the
    attention-group order when it is neither ASAS nor AASS."""

    policy: str
    config: DepConfig
    makespan_ms: float
    solve_s: float = 0.0
    ag_order: tuple[tuple[str, int], ...] | None = None

    @property
    def samples(self) -> int:
        return self.config.r1 * self.config.m_a


def paper_times(m: DepModel, c: DepCosts, ag: int, eg: int) -> Times:
    """``times`` of the paper's cost model (Eq. 1-4) on fitted lines ``c``."""
    return lambda m_a, r2: task_times(m, c, ag, eg, m_a, r2)


def r2_limit(m: DepModel, ag: int, m_a: int) -> int:
    """Largest r2 that leaves every expert at least one token copy per chunk (<= R2_MAX)."""
    r2 = 1
    while r2 < R2_MAX and tokens_per_expert(m, ag, m_a, r2 + 1) >= 1.0:
        r2 += 1
    return r2


def evaluate(times: Times, layers: int, cfg: DepConfig, exact: bool = True) -> float:
    """Makespan (ms): the exact evaluation, or, with ``exact=False``, Eq. 13 for ASAS
    (FinDEP's dependencies) and for other orders the exact span of 3 layers extended by the
    third layer's increment (layers repeat, so the schedule settles into a period)."""
    tt = times(cfg.m_a, cfg.r2)
    if not exact and cfg.order == "ASAS" and not cfg.a2e_after_shared:
        return closed_form_ms(tt, layers, cfg.r1, cfg.r2)
    if not exact and layers > 4:
        s2, s3 = (makespan_ms(tt, n, cfg).makespan_ms for n in (2, 3))
        return s3 + (layers - 3) * (s3 - s2)
    return makespan_ms(tt, layers, cfg).makespan_ms


def best_r2(times: Times, layers: int, cfg: DepConfig, r2_max: int, exact: bool) -> tuple[int, float]:
    """(r2, makespan) minimising the makespan over r2 in [1, r2_max] by ternary search: the
    makespan is convex in 1/r2 (Thm. 4), hence unimodal in r2; the bracket's few points are
    then evaluated in full."""
    f = lambda r2: evaluate(times, layers, replace(cfg, r2=r2), exact)  # noqa: E731
    lo, hi = 1, r2_max
    while hi - lo > 2:
        a, b = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        if f(a) <= f(b):
            hi = b
        else:
            lo = a
    return min(((r2, f(r2)) for r2 in range(lo, hi + 1)), key=lambda p: (p[1], p[0]))


def algorithm1(m: DepModel, times: Times, ag: int, m_max: int, exact: bool = False) -> DepResult:
    """FinDEP's Algorithm 1: m_a from M_max down to 1 with the largest r1 memory allows
    (r1 m_a <= M_max), keeping only the Pareto frontier of (m_a, r1) (a repeated r1 is
    skipped); the best r2 of ASAS by a convex search on Eq. 13, and AASS at that r2 +- 1
    (up to :data:`AASS_MAX_R1` micro-batches); the highest throughput wins.
    ``exact=False`` prices the search by :func:`evaluate`'s fast forms; the winner is
    evaluated exactly."""
    if m_max < 1:
        raise MoeschedError(f"{m.name}: not one sample fits an attention GPU (M_max = {m_max})")
    t0, best, prev = time.perf_counter(), None, 0
    for m_a in range(m_max, 0, -1):
        r1 = m_max // m_a
        if r1 == 0 or r1 == prev:
            continue
        prev = r1
        top = r2_limit(m, ag, m_a)
        r2, span = best_r2(times, m.layers, DepConfig(m_a, r1, 1, "ASAS"), top, exact)
        cands = [DepResult("findep", DepConfig(m_a, r1, r2, "ASAS"), span)]
        if r1 <= AASS_MAX_R1:  # AASS near ASAS's best r2 (the same convex trade-off in r2)
            cands += [DepResult("findep", cfg, evaluate(times, m.layers, cfg, exact))
                      for cfg in (DepConfig(m_a, r1, q, "AASS") for q in (r2 - 1, r2, r2 + 1) if 1 <= q <= top)]
        for cand in cands:
            if best is None or _rate(cand) > _rate(best):
                best = cand
    assert best is not None
    exact_span = evaluate(times, m.layers, best.config, exact=True)
    return replace(best, makespan_ms=exact_span, solve_s=time.perf_counter() - t0)


def _rate(r: DepResult) -> float:
    return r.samples / r.makespan_ms


def pppipe(m: DepModel, times: Times, ag: int, m_max: int) -> DepResult:
    """MegaScale-Infer's ping-pong pipeline (PPPipe) at its best configuration: r1
    micro-batches alternating between the groups, no token-level split (r2 = 1), the A2E
    waiting for the shared expert, 2 (1 + T_c / T_f) <= r1 <= N_m = 4 (T_f the slower
    group's time, T_c a transfer's; fewer where memory allows fewer); every m_a is tried."""
    t0, best = time.perf_counter(), None
    for m_a in range(1, m_max + 1):
        tt = times(m_a, 1)
        t_f = max(tt.attn + tt.shared, tt.expert)
        need = 2 * (1 + tt.comm / t_f) if t_f > 0 else 1
        top = min(m_max // m_a, PPPIPE_MAX_MICROBATCHES)
        for r1 in range(1, top + 1):
            if r1 < need and r1 != top:
                continue
            cfg = DepConfig(m_a, r1, 1, "ASAS", a2e_after_shared=True)
            cand = DepResult("pppipe", cfg, evaluate(times, m.layers, cfg))
            if best is None or _rate(cand) > _rate(best):
                best = cand
    assert best is not None
    return replace(best, solve_s=time.perf_counter() - t0)


def naive_dep(m: DepModel, times: Times, ag: int, m_max: int) -> DepResult:
    """Naive DEP: one micro-batch of every sample memory allows, no chunking, each task
    after the one before (r1 = r2 = 1, the A2E after the shared expert)."""
    cfg = DepConfig(m_max, 1, 1, "ASAS", a2e_after_shared=True)
    return DepResult("naive-dep", cfg, evaluate(times, m.layers, cfg))


def own_search(m: DepModel, times: Times, ag: int, m_max: int, start: DepResult, budget: int = 200,
               deadline: float | None = None) -> DepResult:
    """moesched: from FinDEP's configuration, a local search over any attention-group
    order (not only ASAS/AASS: a shared-expert task moved to any later slot) and r2 +- 1,
    on the exact evaluation, first improvement, at most ``budget`` evaluations and none
    after ``deadline`` (a ``time.perf_counter()`` value); never worse than ``start``."""
    t0 = time.perf_counter()
    cfg = start.config
    seq = list(start.ag_order or ag_sequence(cfg.order, cfg.r1))
    best_span = makespan_ms(times(cfg.m_a, cfg.r2), m.layers, cfg, seq).makespan_ms
    best_cfg, evals, improved = cfg, 0, True

    def spent() -> bool:
        return evals >= budget or (deadline is not None and time.perf_counter() > deadline)

    while improved and not spent():
        improved = False
        for cand_cfg, cand_seq in _neighbours(best_cfg, seq, r2_limit(m, ag, cfg.m_a)):
            if spent():
                break
            evals += 1
            span = makespan_ms(times(cand_cfg.m_a, cand_cfg.r2), m.layers, cand_cfg, cand_seq).makespan_ms
            if span < best_span - 1e-9:
                best_span, best_cfg, seq, improved = span, cand_cfg, cand_seq, True
                break
    return DepResult("moesched", best_cfg, best_span, time.perf_counter() - t0, tuple(seq))


def _neighbours(cfg: DepConfig, seq: list[tuple[str, int]], r2_max: int):
    """The same order at r2 - 1 and r2 + 1, then orders with one shared-expert task moved
    to another slot after its attention."""
    for r2 in (cfg.r2 - 1, cfg.r2 + 1):
        if 1 <= r2 <= r2_max:
            yield replace(cfg, r2=r2), seq
    for pos, (k, i) in enumerate(seq):
        if k != "s":
            continue
        rest = seq[:pos] + seq[pos + 1:]
        first = rest.index(("a", i)) + 1
        for new in range(first, len(rest) + 1):
            if new != pos:
                yield cfg, rest[:new] + [(k, i)] + rest[new:]


def schedule_of(times: Times, layers: int, r: DepResult) -> Schedule:
    """The evaluated schedule of a result (for its exposed communication, timelines)."""
    return makespan_ms(times(r.config.m_a, r.config.r2), layers, r.config,
                       list(r.ag_order) if r.ag_order else None)
