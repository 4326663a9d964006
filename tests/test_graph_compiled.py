"""The solver's hot path: ``graph.build_compiled`` (no networkx), the priority rules'
``vector`` on compiled graphs and the one-rank event loop give exactly what the networkx
path (``Compiled(graph.build(...))``, priorities called on the DiGraph, the general event
loop) gives, array for array and bit for bit."""
from __future__ import annotations

import dataclasses

import random

import networkx as nx
import pytest

from moesched import graph
from moesched.cluster import Cluster
from moesched.graph import build, build_compiled
from moesched.knobs import Knobs
from moesched.models import PRESETS, MoEModel
from moesched.profile import Profile
from moesched.schedules.base import priority_vector, ready_priority, seq_priority
from moesched.schedules.priorities import theorem1, window_priority
from moesched.sim import Compiled
from moesched.simloop import event_loop, event_loop_1
from moesched.solve import grids
from moesched.solve.candidates import Evaluator
from moesched.solve.rules import Rule

def _gpu_only(name: str) -> Profile:
    """A shipped profile without its host costs: the compiled path models GPU time only."""
    return dataclasses.replace(Profile.load(name), host=None)


NVLINK = _gpu_only("h200x4-nvlink")
PROFILES = {(1, 4): [None, NVLINK, _gpu_only("h200x4-hostmem"), Profile.load("analytic-h200x4-nvlink")],
            (2, 2): [None, _gpu_only("h200x4-2nodes"), Profile.load("analytic-h200x4-2nodes")],
            (2, 4): [None], (4, 2): [None]}
CLUSTERS = [Cluster(1, 4), Cluster(1, 4, ep=2), Cluster(1, 4, ep=1), Cluster(2, 2), Cluster(2, 2, ep=2),
            Cluster(2, 2, ep=4), Cluster(2, 4), Cluster(2, 4, ep=4), Cluster(4, 2, ep=8), Cluster(4, 2, ep=2)]
RULES = [Rule(), Rule("first", "first", "layer", None), Rule("seq", "first", "end", 0),
         Rule("first", "seq", "inline", 2)]
GRID = grids.schemoe675(4)[::37] + grids.fsmoe1458(4)[::53]


def random_case(rng: random.Random) -> tuple[MoEModel, Cluster, Profile | None, Knobs]:
    """A model (preset, grid layer or small random one: capacity, shared experts, fp32),
    a cluster (multi-node, expert-DP), a profile and knobs (per-layer degrees, chunked
    attention, S_p from one to hundreds of chunks, both gradient syncs, hierarchical
    all-to-all, serialize)."""
    pick = rng.random()
    if pick < 0.3:
        base = rng.choice(list(PRESETS.values()))
        m = base.with_layers(rng.randint(1 + len(base.dense_layers), 4))
    elif pick < 0.5:
        m = rng.choice(GRID)
    else:
        m = MoEModel(name="r", layers=rng.randint(1, 5), d_model=rng.choice([64, 128, 256]), heads=4,
                     seq_len=rng.choice([16, 32, 48]), micro_batch=rng.choice([1, 2, 4, 6, 8]),
                     ffn_hidden=rng.choice([64, 128, 384]), experts=16, top_k=rng.choice([1, 2]),
                     capacity_factor=rng.choice([None, 1.0, 1.25]), shared_experts=rng.choice([0, 0, 1, 2]),
                     expert_kind=rng.choice(["gpt", "swiglu"]), dtype=rng.choice(["bf16", "fp32"]))
    cluster = rng.choice(CLUSTERS)
    if m.experts % cluster.ep_size:
        m = MoEModel(**{**m.__dict__, "experts": cluster.world})
    profile = rng.choice(PROFILES[(cluster.nodes, cluster.gpus_per_node)])
    at = rng.random() < 0.4
    degs = [r for r in range(1, 17) if m.tokens % r == 0 and (not at or m.micro_batch % r == 0)]
    L = m.layers
    if rng.random() < 0.5:
        rf, rb = [rng.choice(degs)] * L, [rng.choice(degs)] * L
    else:
        rf, rb = [rng.choice(degs) for _ in range(L)], [rng.choice(degs) for _ in range(L)]
    total = 4 * m.d_model ** 2 * L * m.bytes_per_elem
    sp = rng.choice([None, None, max(1, total // rng.choice([1, 2, 3, 7, 50, 300])), rng.randint(1, 10 ** 7)])
    knobs = Knobs(tuple(rf), tuple(rb), at_chunked=at, grad_chunk_bytes=sp,
                  grad_sync=rng.choice(["overlap", "after_backward"]), a2a=rng.choice(["flat", "hierarchical"]),
                  serialize=rng.random() < 0.15)
    return m, cluster, profile, knobs


def assert_same_compiled(a: Compiled, b: Compiled) -> None:
    assert a.names == b.names and a.res == b.res and a.seq == b.seq and a.dur == b.dur
    assert a.preds == b.preds and a.succ == b.succ and a.npred == b.npred
    assert a.kind == b.kind and a.phase == b.phase and a.layer == b.layer and a.layers == b.layers
    assert (a.loss, a.ranks, a.slowdown) == (b.loss, b.ranks, b.slowdown)
    # build() adds the host model's host_us (profiles with host costs); the solver's
    # compiled path leaves it out on purpose (list scheduling ignores the host).
    b_attrs = [{k: v for k, v in y.items() if k != "host_us"} for y in b.attrs]
    assert a.attrs == b_attrs
    for x, y in zip(a.attrs, b_attrs):
        assert list(x) == list(y) and all(type(x[k]) is type(y[k]) for k in x)


def assert_same_digraph(g: nx.DiGraph, h: nx.DiGraph) -> None:
    assert g.graph == h.graph and list(g.nodes) == list(h.nodes) and list(g.edges) == list(h.edges)
    assert [g.nodes[t] for t in g] == [h.nodes[t] for t in h]
    assert [(list(g.pred[t]), list(g.succ[t])) for t in g] == [(list(h.pred[t]), list(h.succ[t])) for t in h]


@pytest.mark.parametrize("seed", range(6))
def test_build_compiled_equals_compiled_digraph(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(40):
        m, cluster, profile, knobs = random_case(rng)
        g = build(m, cluster, profile, knobs)
        fast = build_compiled(m, cluster, profile, knobs)
        ref = Compiled(g)
        assert_same_compiled(fast, ref)
        assert fast.makespan_us(RULES[1].vector(fast)) == ref.makespan_us(RULES[1].vector(ref))
        assert fast.makespan_us(strict=True) == ref.makespan_us(strict=True)
        assert_same_digraph(fast.graph, g)  # the DiGraph made on demand


def test_cached_bodies_give_the_graphs_of_fresh_builds() -> None:
    """Graphs differing only in gradient knobs share one cached body; every one equals a
    build from an empty cache, whatever was built before."""
    m = PRESETS["DeepSeek-V2-Lite"].with_layers(3)
    cluster, profile = Cluster(2, 2, ep=2), _gpu_only("h200x4-2nodes")
    variants = [Knobs.uniform(3, 2, 4, grad_chunk_bytes=sp, grad_sync=sync, a2a="hierarchical", serialize=ser)
                for sp in (None, 1 << 24, 5 << 22) for sync in ("overlap", "after_backward") for ser in (False, True)]
    warm = [build_compiled(m, cluster, profile, k) for k in variants + variants[::-1]]
    for k, c in zip(variants + variants[::-1], warm):
        graph._BODIES.clear()
        assert_same_compiled(c, build_compiled(m, cluster, profile, k))
        assert_same_digraph(c.graph, build(m, cluster, profile, k))


def test_priority_vectors_equal_the_digraph_calls() -> None:
    """Every built-in priority (and a plain function, which goes through the DiGraph) ranks
    the compiled graph as it ranks the DiGraph."""
    rng = random.Random(7)
    for _ in range(25):
        m, cluster, profile, knobs = random_case(rng)
        c = build_compiled(m, cluster, profile, knobs)
        g = build(m, cluster, profile, knobs)
        chunks = [t for t in g if g.nodes[t]["kind"] == "grad_ar"]
        window = {t: rng.randrange(m.layers) for t in chunks if rng.random() < 0.5}
        prios = [seq_priority, ready_priority, theorem1(seq_priority), theorem1(ready_priority),
                 window_priority(window), theorem1(window_priority(window, ready_priority)),
                 lambda h: {t: -float(a["seq"]) for t, a in h.nodes(data=True)}, *RULES]
        for p in prios:
            expect = p(g)
            assert set(expect) == set(g)
            assert priority_vector(p, c) == [expect[t] for t in c.names]
            assert priority_vector(p, Compiled(g)) == [expect[t] for t in c.names]


@pytest.mark.parametrize("seed", range(4))
def test_one_rank_event_loop_equals_the_general_loop(seed: int) -> None:
    """The one-rank loop (with its run-alone shortcut) reproduces the general loop's start
    and end times exactly, for random priorities (with ties), durations (with zeros) and
    interference factors."""
    rng = random.Random(seed)
    for _ in range(30):
        m, cluster, profile, knobs = random_case(rng)
        c = build_compiled(m, cluster, profile, knobs)
        n = len(c.names)
        dur = [0.0 if rng.random() < 0.1 else rng.uniform(0.0, 500.0) for _ in range(n)]
        prio = [float(rng.randrange(max(1, n // rng.choice([1, 3])))) for _ in range(n)]
        for sc, sm in ((1.0, 1.0), (rng.uniform(1.0, 3.0), rng.uniform(1.0, 3.0)), (1.0, 2.5), (None, None)):
            if sc is None:  # factors per collective
                inv_c, inv_m = [rng.uniform(0.3, 1.0) for _ in range(n)], [rng.uniform(0.3, 1.0) for _ in range(n)]
            else:
                inv_c, inv_m = [1.0 / sc] * n, [1.0 / sm] * n
            st, en, ms = event_loop_1(c.res, dur, c.succ, c.npred, prio, inv_c, inv_m, c.names)
            st0, en0, ms0 = event_loop(c.res, [[d] for d in dur], c.succ, c.npred, prio, 1, inv_c, inv_m, False,
                                       c.names)
            assert (st, en, ms) == (st0[0], en0[0], ms0)


def test_evaluator_answers_repeats_from_its_memo() -> None:
    m = MoEModel(**{**PRESETS["Mixtral-7B-FSMoE"].__dict__, "layers": 2})
    ev = Evaluator(m, Cluster(1, 4), NVLINK)
    knobs = Knobs.uniform(2, 2, grad_chunk_bytes=1 << 22)
    a: list[float] = []
    b: list[float] = []
    first = ev.step_us(knobs, RULES[1], a)
    assert ev.step_us(knobs, RULES[1], b) == first and a == b and ev.sims == 2
    c = ev.compiled(knobs)
    assert first == c.makespan_us(RULES[1].vector(c)) == Compiled(c.graph).makespan_us(RULES[1](c.graph))
