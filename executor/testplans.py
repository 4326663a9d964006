"""Plans for tests and smoke runs: tiny models, random valid knobs, random issue orders.

``random_order`` draws a uniformly chosen ready task at every step: a random linear
extension of the task graph.
"""
from __future__ import annotations

import random

import networkx as nx

from moesched.cluster import Cluster
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.plan import Plan


def tiny_model(**kw: object) -> MoEModel:
    """d_model 16, 2 heads, 2 layers, seq 8, batch 4, H 32, 4 experts, top-2, fp32."""
    d: dict = dict(name="tiny", layers=2, d_model=16, heads=2, seq_len=8, micro_batch=4, ffn_hidden=32,
                   experts=4, top_k=2, dtype="fp32")
    d.update(kw)
    return MoEModel(**d)


def random_order(g: nx.DiGraph, rng: random.Random) -> list[str]:
    """A random topological order of g."""
    indeg = {n: g.in_degree(n) for n in g}
    ready = sorted(n for n in g if indeg[n] == 0)
    out = []
    while ready:
        n = ready.pop(rng.randrange(len(ready)))
        out.append(n)
        for s in sorted(g.successors(n)):
            indeg[s] -= 1
            if indeg[s] == 0:
                ready.append(s)
    return out


def make_plan(m: MoEModel, c: Cluster, k: Knobs, rng: random.Random | None = None, policy: str = "test") -> Plan:
    """Plan in graph creation order, or in a random topological order when rng is given."""
    g = build(m, c, None, k)
    order = sorted(g.nodes, key=lambda n: g.nodes[n]["seq"]) if rng is None else random_order(g, rng)
    plan = Plan(policy, m, c, k, order)
    plan.validate()
    return plan


def random_plan(rng: random.Random, cluster: Cluster) -> Plan:
    """Random tiny model variant, random per-layer degrees, gradient chunking and order."""
    ep = cluster.ep_size
    m = tiny_model(experts=ep * rng.choice([1, 2]) if ep > 1 else rng.choice([2, 4]),
                   top_k=rng.choice([1, 2]), expert_kind=rng.choice(["gpt", "swiglu"]),
                   shared_experts=rng.choice([0, 0, 1]), capacity_factor=rng.choice([None, 1.0, 1.5]),
                   layers=rng.choice([1, 2, 3]))
    at = rng.random() < 0.5
    degrees = [1, 2, 4] if at else [1, 2, 4, 8, 16]
    L = m.layers
    k = Knobs(r_fwd=tuple(rng.choice(degrees) for _ in range(L)), r_bwd=tuple(rng.choice(degrees) for _ in range(L)),
              at_chunked=at, grad_chunk_bytes=rng.choice([None, 6, 1001, 4096]),
              grad_sync=rng.choice(["overlap", "after_backward"]), serialize=rng.random() < 0.2,
              a2a=rng.choice(["flat", "hierarchical"]) if cluster.nodes > 1 else "flat")
    return make_plan(m, cluster, k, rng)
