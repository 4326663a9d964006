"""Candidate knobs and the evaluation cache the search draws on.

``Evaluator`` builds each distinct :class:`~moesched.knobs.Knobs` once, compiles it for
:class:`moesched.sim.Compiled`, and answers step times (µs) for any priority. The closed
forms order pipeline degrees so that, under a tight time limit, the likeliest degrees
are tried first.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from moesched import work
from moesched.cluster import Cluster, collective_us
from moesched.errors import MoeschedError
from moesched.knobs import MAX_DEGREE, Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.schedules import POLICIES
from moesched.schedules.base import PriorityFn, Schedule, compiled_graph, priority_vector
from moesched.sim import Compiled
from moesched.solve.rules import Rule

KIB = 2**10
#: S_p grid of the 1-D search: log-spaced 64 KiB .. 64 MiB (x2 steps), plus None (one bucket).
GRAD_CHUNK_GRID: tuple[int | None, ...] = (None,) + tuple(64 * KIB * 2**i for i in range(11))


def degrees(model: MoEModel, at_chunked: bool) -> list[int]:
    """Pipeline degrees 1..16 dividing the tokens (and the micro-batch when attention is
    chunked)."""
    return [r for r in range(1, MAX_DEGREE + 1)
            if model.tokens % r == 0 and (not at_chunked or model.micro_batch % r == 0)]


def closed_form_us(model: MoEModel, cluster: Cluster, profile: Profile, r: int, backward: bool) -> float:
    """Two-stage pipeline estimate of one MoE layer at degree r, µs, interference ignored:
    2*t_a2a(r) + t_e(r) + (r-1)*max(t_e(r), 2*t_a2a(r)) (PipeMoE's form), with t_a2a of a
    flat all-to-all of 1/r of the bytes and t_e the experts on 1/r of the tokens (dX + dW
    in backward)."""
    toks = model.tokens // r
    ta = collective_us(cluster, profile, "all_to_all", "ep", work.a2a_bytes(model, toks), model.shape_key())
    fl = work.expert_fwd_flops(model, toks)
    te = profile.compute_us("expert_fwd", fl)
    if backward:
        te = profile.compute_us("expert_dx", fl) + profile.compute_us("expert_dw", fl)
    return 2 * ta + te + (r - 1) * max(te, 2 * ta)


def ordered_degrees(model: MoEModel, cluster: Cluster, profile: Profile, at_chunked: bool) -> list[int]:
    """Feasible degrees, most promising first by the closed form (forward + backward)."""
    return sorted(degrees(model, at_chunked),
                  key=lambda r: (closed_form_us(model, cluster, profile, r, False)
                                 + closed_form_us(model, cluster, profile, r, True), r))


class Evaluator:
    """Step times (µs) of knobs under priorities, each graph built and compiled once and
    each (knobs, priority) pair simulated once (the search asks for some pairs again).
    ``sims`` counts the step times asked for, repeats included."""

    def __init__(self, model: MoEModel, cluster: Cluster, profile: Profile) -> None:
        self.model, self.cluster, self.profile = model, cluster, profile
        self.sims = 0
        self._memo: dict[tuple[Knobs, object], tuple[float, list[float]]] = {}

    def compiled(self, knobs: Knobs) -> Compiled:
        """The compiled graph of ``knobs`` (shared with the policies' evaluations)."""
        return compiled_graph(self.model, self.cluster, self.profile, knobs)

    def link_bound_us(self, knobs: Knobs) -> float:
        """A lower bound on the step time of ``knobs``, µs, without building its graph: each
        link runs its collectives one at a time, never faster than their profiled durations
        (interference only slows them), so the busiest link's total is a bound. The
        all-to-all work per link and the gradient groups come from the one-bucket graph of
        the same knobs (cached); the S_p chunks are priced from the profile."""
        base = self.compiled(knobs.with_(grad_chunk_bytes=None))
        busy = [0.0, 0.0, 0.0]
        for i, a in enumerate(base.attrs):
            r = base.res[i]
            if not r:
                continue
            if a["kind"] != "grad_ar":
                busy[r] += max(base.dur[i])
                continue
            total, size = int(a["work"]), knobs.grad_chunk_bytes or int(a["work"])
            count, last = -(-total // size), total - (-(-total // size) - 1) * size
            role = "dp" if a["group"] == "dense" else "expert_dp"

            def cost(n: int) -> float:
                return collective_us(self.cluster, self.profile, "all_reduce", role, n)
            busy[r] += (count - 1) * cost(size) + cost(last)
        return max(busy)

    def step_us(self, knobs: Knobs, priority: PriorityFn | Rule, starts: list[float] | None = None) -> float:
        """Predicted step time of ``knobs`` under ``priority`` (a rule or a PriorityFn), µs;
        ``starts``, if given, is filled with the start times (µs) of the graph's tasks."""
        self.sims += 1
        key = (knobs, priority)
        hit = self._memo.get(key)
        if hit is None:
            c = self.compiled(knobs)
            st: list[float] = []
            hit = self._memo[key] = (c.makespan_us(priority_vector(priority, c), starts=st), st)
        if starts is not None:
            starts[:] = hit[1]
        return hit[0]


@dataclass
class Candidate:
    """A schedule the search considered: knobs, priority, predicted step (µs), origin."""

    knobs: Knobs
    priority: PriorityFn
    step_us: float
    source: str
    notes: dict[str, Any] = field(default_factory=dict)

    def schedule(self, name: str = "moesched") -> Schedule:
        label = self.priority.label() if isinstance(self.priority, Rule) else getattr(
            self.priority, "__name__", "policy priority")
        return Schedule(name, self.knobs, self.priority, {"source": self.source, "priority": label, **self.notes})


def published(model: MoEModel, cluster: Cluster, profile: Profile, ev: Evaluator,
              names: tuple[str, ...] = POLICIES) -> dict[str, Candidate | None]:
    """Every published policy's schedule, evaluated; None where the policy cannot schedule
    this model (its knobs do not fit) or its module is not installed."""
    out: dict[str, Candidate | None] = {}
    for name in names:
        try:
            mod = importlib.import_module(f"moesched.schedules.{name}")
        except ModuleNotFoundError:
            out[name] = None
            continue
        try:
            sch = mod.schedule(model, cluster, profile)
            out[name] = Candidate(sch.knobs, sch.priority, ev.step_us(sch.knobs, sch.priority), f"published:{name}")
        except MoeschedError:
            out[name] = None
    return out


class Clock:
    """Deadline bookkeeping for ``--time-limit`` (None = no limit)."""

    def __init__(self, limit_s: float | None, progress: Callable[[str], None] | None = None) -> None:
        self.t0 = time.perf_counter()
        self.limit_s = limit_s
        self.hit = False
        self.progress = progress

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0

    def out(self) -> bool:
        """True (and remembered) once the limit has passed."""
        if self.limit_s is not None and self.elapsed_s() > self.limit_s:
            self.hit = True
        return self.hit

    def say(self, msg: str) -> None:
        if self.progress is not None:
            self.progress(f"[{self.elapsed_s():6.2f} s] {msg}")
