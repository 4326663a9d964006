"""A placement on the task-graph simulator: the step of one schedule with every rank's load.

:func:`placement_routing` turns per-layer placements and the copies each EP rank routes to
each expert into the rank-to-rank matrix of :class:`moesched.routing.Routing` (the copies
of expert e from rank s split evenly over e's replicas, as :mod:`executor.placement` splits
them); :func:`simulate_step` builds the graph of a published schedule
(:mod:`moesched.schedules`), gives its expert tasks and all-to-alls every rank's duration
(:func:`moesched.routing.apply_routing`; the all-to-alls carry :func:`placement_traffic`), simulates it
(:meth:`moesched.sim.Compiled.run`) with the replica gradient all-reduces of every layer as
tasks of the graph (:func:`add_replica_syncs`), and adds the migration from the previous
placements. It is the simulator's view of what :class:`moesched.placement_cost.PlacementCost`
prices layer by layer, with the schedule's overlap of communication and compute.
"""
from __future__ import annotations

from typing import Sequence

import networkx as nx

from moesched import schedules
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.graph import build
from moesched.models import MoEModel
from moesched.placement import Placement
from moesched.placement_cost import PlacementCost
from moesched.profile import Profile
from moesched.routing import Routing, apply_routing
from moesched.schedules.base import priority_vector
from moesched.sim import Compiled


def placement_routing(placements: Sequence[Placement], per_source: Sequence[Sequence[Sequence[float]]]) -> Routing:
    """copies[l][src][dst] computed on, from per_source[l][src][e] (copies rank src routes
    to expert e): a replicated expert's copies split evenly over its replicas, a split
    expert's over its shards (each computes 1/n of the FLOPs of every copy). What the
    all-to-alls carry is :func:`placement_traffic`."""
    return _matrices(placements, per_source, traffic=False)


def placement_traffic(placements: Sequence[Placement], per_source: Sequence[Sequence[Sequence[float]]]) -> Routing:
    """copies[l][src][dst] the all-to-alls carry: as :func:`placement_routing`, but every
    copy to a split expert goes to each of its shards (the source sums the partial outputs;
    :meth:`moesched.placement_cost.PlacementCost.layer` prices the same)."""
    return _matrices(placements, per_source, traffic=True)


def _matrices(placements: Sequence[Placement], per_source: Sequence[Sequence[Sequence[float]]],
              traffic: bool) -> Routing:
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
                    m[s][r] += n if traffic and p.split[e] else n / len(reps)
        out.append([[int(round(x)) for x in r] for r in m])
    return Routing.from_lists(out)


def even_sources(loads: Sequence[Sequence[float]], ranks: int) -> list[list[list[float]]]:
    """per_source when only per-expert totals are known: every rank sends 1/ranks of each."""
    return [[[n / ranks for n in layer] for _ in range(ranks)] for layer in loads]


def add_replica_syncs(g: nx.DiGraph, cost: PlacementCost, placements: Sequence[Placement]) -> None:
    """Add to ``g`` one gradient all-reduce task per layer with replicated experts, after all
    of that layer's expert weight gradients (``expert_dw``), on the communication link of its
    widest replica group, each rank busy for the all-reduces of the replicas it holds
    (:meth:`moesched.placement_cost.PlacementCost.allreduce_us`): the simulator overlaps them
    with the backward of the layers below, as it does the data-parallel gradient chunks.
    A split expert's shards hold disjoint weights (tensor parallelism inside the expert,
    Pipeline MoE / Megatron expert tensor parallelism): no all-reduce."""
    dw: dict[int, list[str]] = {}
    for n, a in g.nodes(data=True):
        if a["kind"] == "expert_dw":
            dw.setdefault(int(a["layer"]), []).append(n)
    seq = max(a["seq"] for _, a in g.nodes(data=True)) + 1
    for l, p in enumerate(placements):
        groups = [rs for rs, split in zip(p.replicas, p.split) if len(rs) > 1 and not split]
        if not groups:
            continue
        per_rank = [0.0] * p.ranks
        cross = False
        for rs in groups:
            t = cost.allreduce_us(rs, cost.expert_param_bytes)
            cross = cross or len({cost.node(r) for r in rs}) > 1
            for r in rs:
                per_rank[r] += t
        name = f"P.replica_ar.L{l}"
        g.add_node(name, seq=seq + l, duration_us=max(per_rank), duration_by_rank_us=per_rank, kind="grad_ar",
                   layer=-1, chunk=0, nchunks=1, phase="grad", resource="comm_inter" if cross else "comm_intra",
                   op="all_reduce", scope="inter" if cross else "intra", work=cost.expert_param_bytes * len(groups),
                   group="replica", offset_bytes=0, layers=(l,), tokens=0, host_us=0.0)
        for d in dw.get(l, []):
            g.add_edge(d, name)


def simulate_step(model: MoEModel, cluster: Cluster, profile: Profile, placements: Sequence[Placement],
                  per_source: Sequence[Sequence[Sequence[float]]], schedule: str = "vanilla",
                  previous: Sequence[Placement] | None = None) -> float:
    """µs of one step of ``schedule`` under ``placements`` (one per layer) with the routing
    ``per_source`` [layer][EP rank][expert]: the simulated makespan over every rank, the
    replica all-reduces in the graph (:func:`add_replica_syncs`), plus, when ``previous``
    placements are given, the migration to ``placements`` before the step
    (:meth:`moesched.placement_cost.PlacementCost.migrate_us`, layer after layer)."""
    if len(placements) != model.layers or len(per_source) != model.layers:
        raise MoeschedError(f"simulate_step: need one placement and one routing per layer ({model.layers})")
    if previous is not None and len(previous) != model.layers:
        raise MoeschedError(f"simulate_step: need one previous placement per layer ({model.layers})")
    sched = schedules.get(schedule).schedule(model, cluster, profile)
    g = build(model, cluster, profile, sched.knobs)
    apply_routing(g, model, cluster, profile, placement_routing(placements, per_source),
                  placement_traffic(placements, per_source))
    cost = PlacementCost(model, cluster, profile)
    add_replica_syncs(g, cost, placements)
    c = Compiled(g)
    _, _, makespan = c.run(priority_vector(sched.priority, c))
    moves = sum(cost.migrate_us(a, b) for a, b in zip(previous, placements)) if previous is not None else 0.0
    return makespan + moves
