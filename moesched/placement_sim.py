"""A placement on the task-graph simulator: the step of one schedule with every rank's load.

:func:`placement_routing` turns per-layer placements and the copies each EP rank routes to
each expert into the rank-to-rank matrix of :class:`moesched.routing.Routing` (the copies
of expert e from rank s split evenly over e's replicas, as :mod:`executor.placement` splits
them); :func:`simulate_step` builds the graph of a published schedule
(:mod:`moesched.schedules`), gives its expert tasks and all-to-alls every rank's duration
(:func:`moesched.routing.apply_routing`), simulates it
(:meth:`moesched.sim.Compiled.run`), and adds the replica gradient all-reduces of every
layer (:meth:`moesched.placement.PlacementCost.sync_us`; they are not tasks of the graph).
It is the simulator's view of what :class:`moesched.placement.PlacementCost` prices layer
by layer, with the schedule's overlap of communication and compute.
"""
from __future__ import annotations

from typing import Sequence

from moesched import schedules
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.graph import build
from moesched.models import MoEModel
from moesched.placement import Placement, PlacementCost
from moesched.profile import Profile
from moesched.routing import Routing, apply_routing
from moesched.schedules.base import priority_vector
from moesched.sim import Compiled


def placement_routing(placements: Sequence[Placement], per_source: Sequence[Sequence[Sequence[float]]]) -> Routing:
    """copies[l][src][dst] from per_source[l][src][e] (copies rank src routes to expert e)."""
    out = []
    for p, layer in zip(placements, per_source):
        S = p.ranks
        if len(layer) != S:
            raise MoeschedError(f"placement routing: {len(layer)} source ranks, the placement has {S}")
        m = [[0.0] * S for _ in range(S)]
        for s, row in enumerate(layer):
            for e, n in enumerate(row):
                reps = p.replicas[e]
                for r in reps:
                    m[s][r] += n / len(reps)
        out.append([[int(round(x)) for x in r] for r in m])
    return Routing.from_lists(out)


def even_sources(loads: Sequence[Sequence[float]], ranks: int) -> list[list[list[float]]]:
    """per_source when only per-expert totals are known: every rank sends 1/ranks of each."""
    return [[[n / ranks for n in layer] for _ in range(ranks)] for layer in loads]


def simulate_step(model: MoEModel, cluster: Cluster, profile: Profile, placements: Sequence[Placement],
                  per_source: Sequence[Sequence[Sequence[float]]], schedule: str = "vanilla") -> float:
    """µs of one step of ``schedule`` under ``placements`` (one per layer) with the routing
    ``per_source`` [layer][EP rank][expert]: the simulated makespan over every rank plus the
    replica all-reduces."""
    if len(placements) != model.layers or len(per_source) != model.layers:
        raise MoeschedError(f"simulate_step: need one placement and one routing per layer ({model.layers})")
    sched = schedules.get(schedule).schedule(model, cluster, profile)
    g = build(model, cluster, profile, sched.knobs)
    apply_routing(g, model, cluster, profile, placement_routing(placements, per_source))
    c = Compiled(g)
    _, _, makespan = c.run(priority_vector(sched.priority, c))
    cost = PlacementCost(model, cluster, profile)
    return makespan + sum(cost.sync_us(p) for p in placements)
