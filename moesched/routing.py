"""Measured routing on the task graph: per-rank expert load and all-to-all volume.

The graph prices every rank alike, as if the router spread each rank's T*k token copies
evenly over the experts. Real routing does not: with a capacity factor f a rank's experts
may receive up to f times the mean, dropless routing has no bound, and in every all-to-all
all ranks wait for the one that sends or receives most. The executor knows the routing of
a step exactly (the count exchange gives every rank the whole matrix, see
:mod:`executor.state`), so a prediction can use it.

``Routing.copies[l][src][dst]``: token copies rank ``src`` sent to the experts of rank
``dst`` in layer ``l`` over one step (all chunks; dropped copies excluded), for one EP group
(ranks by EP index). :func:`apply_routing` turns it into per-rank durations
(``duration_by_rank_us``, :mod:`moesched.sim`) of every rank of the cluster (rank r has EP
index r mod ep): expert tasks of layer l on rank r do recv[l][r] / (T*k) of the even
work, and a flat all-to-all of layer l costs rank r its profile time at
max(send, recv)[l][r] / (T*k) of the even bytes. Loads are per layer, not per chunk: every
chunk of a layer takes the layer's shares. The hops of a hierarchical all-to-all and the
host issue costs stay even.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import networkx as nx

from moesched import work
from moesched.cluster import Cluster, collective_us
from moesched.errors import MoeschedError
from moesched.models import MoEModel
from moesched.profile import Profile

EXPERT_KINDS = ("expert_fwd", "expert_dx", "expert_dw")
A2A_KINDS = ("dispatch", "combine", "combine_bwd", "dispatch_bwd")


@dataclass(frozen=True)
class Routing:
    """copies[l][src][dst] of one step (see the module docstring); S = len(copies[l])."""

    copies: tuple[tuple[tuple[int, ...], ...], ...]

    @classmethod
    def from_lists(cls, copies: Sequence[Sequence[Sequence[int]]]) -> "Routing":
        return cls(tuple(tuple(tuple(int(x) for x in row) for row in layer) for layer in copies))

    def to_lists(self) -> list[list[list[int]]]:
        return [[list(row) for row in layer] for layer in self.copies]

    def shares(self, layer: int, even_copies: int) -> tuple[list[float], list[float]]:
        """(received, sent) copies of each EP rank in ``layer`` over ``even_copies`` (the
        copies the graph assumes every rank sends and receives)."""
        m = self.copies[layer]
        S = len(m)
        recv = [sum(m[s][d] for s in range(S)) / even_copies for d in range(S)]
        sent = [sum(m[s]) / even_copies for s in range(S)]
        return recv, sent

    def check(self, model: MoEModel, ep: int) -> None:
        """Raise MoeschedError unless it has one S x S matrix per layer of ``model``, S = ep,
        with non-negative counts and no rank sending more than its T*k copies."""
        full = model.tokens * model.top_k
        if len(self.copies) != model.layers:
            raise MoeschedError(f"routing has {len(self.copies)} layers, the model {model.layers}")
        for l, m in enumerate(self.copies):
            if len(m) != ep or any(len(row) != ep for row in m):
                raise MoeschedError(f"routing of layer {l} is not {ep} x {ep} (the EP group)")
            if any(x < 0 for row in m for x in row) or any(sum(row) > full for row in m):
                raise MoeschedError(f"routing of layer {l} has negative counts or more than T*k = {full} copies a rank")


def apply_routing(g: nx.DiGraph, model: MoEModel, cluster: Cluster, profile: Profile, routing: Routing,
                  traffic: Routing | None = None) -> nx.DiGraph:
    """Give the expert tasks and flat all-to-alls of ``g`` (built by
    :func:`moesched.graph.build` for ``model`` on ``cluster`` under ``profile``) per-rank
    durations from ``routing``, and simulate every rank of the cluster (graph attribute
    ``ranks``). ``traffic`` (same shape; default ``routing``): the copies the all-to-alls
    carry where they differ from the copies computed on (a split expert receives every copy
    on each shard and computes 1/n of each, :func:`moesched.placement_sim.placement_traffic`).
    Modifies and returns ``g``."""
    ep, R = cluster.ep_size, cluster.world
    routing.check(model, ep)
    if traffic is not None and (len(traffic.copies) != model.layers or any(
            len(m) != ep or any(len(row) != ep or min(row) < 0 for row in m) for m in traffic.copies)):
        raise MoeschedError(f"routing: the traffic must have one {ep} x {ep} matrix per layer, no negative counts")
    even = work.routed_copies(model, model.tokens)
    if even <= 0:
        raise MoeschedError("routing: the model routes no copies")
    shape = model.shape_key()
    shares = [routing.shares(l, even) for l in range(model.layers)]
    moved = [(traffic or routing).shares(l, even) for l in range(model.layers)]
    g.graph["ranks"] = R
    for _, a in g.nodes(data=True):
        kind = a["kind"]
        if kind in EXPERT_KINDS:
            recv = shares[a["layer"]][0]
            copy_us = float(a.get("saved_copy_us", 0.0))  # scales with the copies, as the work
            a["saved_copy_by_rank_us"] = [copy_us * recv[r % ep] for r in range(R)]
            a["duration_by_rank_us"] = [profile.compute_us(kind, float(a["work"]) * recv[r % ep], shape,
                                                           model, ep) + a["saved_copy_by_rank_us"][r]
                                        for r in range(R)]
        elif kind in A2A_KINDS and a.get("hop") is None:
            recv, sent = moved[a["layer"]]
            a["duration_by_rank_us"] = [collective_us(cluster, profile, "all_to_all", "ep",
                                                      float(a["work"]) * max(recv[r % ep], sent[r % ep]), shape)
                                        for r in range(R)]
    return g


def summary(routing: Routing, model: MoEModel) -> dict[str, Any]:
    """Largest received share over ranks and layers, and its mean over layers (1.0 = even)."""
    even = work.routed_copies(model, model.tokens)
    worst = [max(routing.shares(l, even)[0]) for l in range(len(routing.copies))]
    return {"max_recv_share": round(max(worst), 4), "mean_max_recv_share": round(sum(worst) / len(worst), 4)}
