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
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.sim import Compiled, Timeline

#: Maps a built graph to a priority per task (lower first).
PriorityFn = Callable[[nx.DiGraph], dict[str, float]]


def seq_priority(g: nx.DiGraph) -> dict[str, float]:
    """Creation order: forward by layer, backward in reverse; chunks in order; gradient
    chunks after all backward tasks (so the link takes an all-to-all first whenever both
    are ready)."""
    return {t: float(a["seq"]) for t, a in g.nodes(data=True)}


def ready_priority(g: nx.DiGraph) -> dict[str, float]:
    """Gradient chunks rank as if issued right after the task that makes them ready
    (PyTorch DDP: a bucket's all-reduce is launched as soon as it fills, no priority)."""
    pr = seq_priority(g)
    for t, a in g.nodes(data=True):
        if a["kind"] == "grad_ar":
            pr[t] = max((pr[p] for p in g.predecessors(t)), default=0.0) + 0.5
    return pr


@dataclass(frozen=True)
class Schedule:
    """A policy's decision: knobs plus a priority rule."""

    policy: str
    knobs: Knobs
    priority: PriorityFn = seq_priority
    notes: dict = field(default_factory=dict)


@dataclass
class Evaluation:
    """A schedule simulated: the graph, the timeline and the step time in µs."""

    schedule: Schedule
    graph: nx.DiGraph
    timeline: Timeline

    @property
    def step_us(self) -> float:
        return self.timeline.makespan_us


_COMPILED: "OrderedDict[tuple, tuple[Profile, Compiled]]" = OrderedDict()
_COMPILED_MAX = 256


def compiled_graph(model: MoEModel, cluster: Cluster, profile: Profile, knobs: Knobs) -> Compiled:
    """The graph of ``knobs``, built and compiled once per process (policies and the solver
    evaluate the same knobs many times). The graph must not be mutated by callers."""
    key = (id(profile), model, cluster, knobs)
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is profile:
        _COMPILED.move_to_end(key)
        return hit[1]
    c = Compiled(build(model, cluster, profile, knobs))
    _COMPILED[key] = (profile, c)
    if len(_COMPILED) > _COMPILED_MAX:
        _COMPILED.popitem(last=False)
    return c


def evaluate(model: MoEModel, cluster: Cluster, profile: Profile, schedule: Schedule) -> Evaluation:
    """Build (or reuse) the graph for ``schedule`` and simulate it under its priorities."""
    c = compiled_graph(model, cluster, profile, schedule.knobs)
    start, end, ms = c.run(schedule.priority(c.graph))
    tl = c.timeline(start, end, ms, {"ranks": c.ranks, "compute_slowdown": c.slowdown[0],
                                     "comm_slowdown": c.slowdown[1], "strict": False})
    return Evaluation(schedule, c.graph, tl)
