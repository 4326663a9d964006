"""What every schedule policy returns, and how a schedule is evaluated on the simulator.

A policy turns (model, cluster, profile) into a :class:`Schedule`: knobs that shape the
task graph, and a priority per task for the simulator's list scheduler. Evaluating it
builds the graph, simulates it, and gives the issue order the executor replays.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import networkx as nx

from moesched.cluster import Cluster
from moesched.graph import build_compiled
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.sim import Compiled, Timeline

#: Maps a built graph to a priority per task (lower first).
PriorityFn = Callable[[nx.DiGraph], dict[str, float]]


class Priority:
    """A :data:`PriorityFn` that also ranks the tasks of a :class:`~moesched.sim.Compiled`
    graph directly: ``vector(c)`` gives the priorities aligned with ``c.names``, so
    evaluating it needs no networkx DiGraph (see :func:`priority_vector`). Calling it on a
    DiGraph gives the same numbers as a dict. ``__name__`` labels it in notes."""

    def __init__(self, name: str) -> None:
        self.__name__ = name

    def __call__(self, g: nx.DiGraph) -> dict[str, float]:
        c = Compiled(g)
        return dict(zip(c.names, self.vector(c)))

    def vector(self, c: Compiled) -> list[float]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<priority {self.__name__}>"


def priority_vector(priority: PriorityFn, c: Compiled) -> list[float]:
    """The priorities ``priority`` gives the tasks of ``c``, aligned with ``c.names``: from
    its ``vector(c)`` when it has one (:class:`Priority`, the solver's rules), else by
    calling it on ``c.graph`` (which builds the DiGraph if needed)."""
    vec = getattr(priority, "vector", None)
    return vec(c) if vec is not None else c.vector(priority(c.graph))


class _SeqPriority(Priority):
    """Creation order: forward by layer, backward in reverse; chunks in order; gradient
    chunks after all backward tasks (so the link takes an all-to-all first whenever both
    are ready)."""

    def vector(self, c: Compiled) -> list[float]:
        return list(c.seq)


class _ReadyPriority(Priority):
    """Gradient chunks rank as if issued right after the task that makes them ready
    (PyTorch DDP: a bucket's all-reduce is launched as soon as it fills, no priority)."""

    def vector(self, c: Compiled) -> list[float]:
        pr = list(c.seq)
        preds = c.preds
        for i, kind in enumerate(c.kind):
            if kind == "grad_ar":
                pr[i] = max((pr[p] for p in preds[i]), default=0.0) + 0.5
        return pr


seq_priority = _SeqPriority("seq_priority")
ready_priority = _ReadyPriority("ready_priority")


@dataclass(frozen=True)
class Schedule:
    """A policy's decision: knobs plus a priority rule."""

    policy: str
    knobs: Knobs
    priority: PriorityFn = seq_priority
    notes: dict = field(default_factory=dict)


@dataclass
class Evaluation:
    """A schedule simulated: the compiled graph, the timeline and the step time in µs."""

    schedule: Schedule
    compiled: Compiled
    timeline: Timeline

    @property
    def graph(self) -> nx.DiGraph:
        """The task graph as a networkx DiGraph (built on first use)."""
        return self.compiled.graph

    @property
    def step_us(self) -> float:
        return self.timeline.makespan_us


_COMPILED: "OrderedDict[tuple, tuple[Profile, Compiled]]" = OrderedDict()
_COMPILED_MAX = 256


def compiled_graph(model: MoEModel, cluster: Cluster, profile: Profile, knobs: Knobs) -> Compiled:
    """The graph of ``knobs``, built and compiled once per process (policies and the solver
    evaluate the same knobs many times), without a DiGraph until ``.graph`` is read. The
    graph must not be mutated by callers."""
    key = (id(profile), model, cluster, knobs)
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is profile:
        _COMPILED.move_to_end(key)
        return hit[1]
    c = build_compiled(model, cluster, profile, knobs)
    _COMPILED[key] = (profile, c)
    if len(_COMPILED) > _COMPILED_MAX:
        _COMPILED.popitem(last=False)
    return c


def executed_timeline(model: MoEModel, cluster: Cluster, profile: Profile, ev: Evaluation) -> Timeline:
    """The step of ``ev`` as the executor runs it: its start order replayed in strict mode on
    the graph with the profile's host issue costs (:func:`moesched.plan.replay`, the host
    model of :mod:`moesched.host`). This is the step time every table reports ("host
    model") and what ``moesched validate`` compares with measurements. Without host costs
    in the profile it is ``ev.timeline`` (list scheduling on GPU costs)."""
    if profile.host is None:
        return ev.timeline
    from moesched.plan import replay
    return replay(model, cluster, profile, ev.schedule.knobs, ev.timeline.order())


def evaluate(model: MoEModel, cluster: Cluster, profile: Profile, schedule: Schedule) -> Evaluation:
    """Build (or reuse) the graph for ``schedule`` and simulate it under its priorities."""
    c = compiled_graph(model, cluster, profile, schedule.knobs)
    start, end, ms = c.run(priority_vector(schedule.priority, c))
    tl = c.timeline(start, end, ms, {"ranks": c.ranks, "compute_slowdown": c.slowdown[0],
                                     "comm_slowdown": c.slowdown[1], "strict": False})
    return Evaluation(schedule, c, tl)
