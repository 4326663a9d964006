"""Rank groups ("roles") in the simulator (moesched.simranks): graphs with one role give
moesched.sim's timelines to the last bit; two-role graphs give hand-computed timelines."""
from __future__ import annotations

import random

import networkx as nx
import pytest

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.models import PRESETS
from moesched.profile import Profile
from moesched.sim import COLUMNS, simulate
from moesched.simranks import ROLE_COLUMNS, add_task, new_graph

NVLINK = Profile.load("analytic-h200x4-nvlink")
TWO_NODES = Profile.load("analytic-h200x4-2nodes")


def topo_priority(g: nx.DiGraph, rnd: random.Random) -> dict[str, float]:
    """A random topological order as priorities (a strict order that cannot deadlock)."""
    indeg = {t: g.in_degree(t) for t in g}
    ready = sorted(t for t, d in indeg.items() if d == 0)
    pr: dict[str, float] = {}
    while ready:
        t = ready.pop(rnd.randrange(len(ready)))
        pr[t] = float(len(pr))
        for s in g.successors(t):
            indeg[s] -= 1
            if indeg[s] == 0:
                ready.append(s)
    return pr


CASES = [("GPT2-Tiny-MoE", Cluster(1, 4), NVLINK, 4, dict(r_bwd=2, grad_chunk_bytes=2**20)),
         ("Mixtral-7B-FSMoE", Cluster(2, 2), TWO_NODES, 2, dict(a2a="hierarchical")),
         ("GPT2-XL-MoE", Cluster(1, 4), NVLINK, 2, dict(grad_sync="after_backward")),
         ("BERT-Large-MoE", Cluster(1, 4), NVLINK, 2, dict(at_chunked=True))]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_one_role_reproduces_sim_exactly(case: int) -> None:
    name, cluster, profile, r, kw = CASES[case]
    m = PRESETS[name]
    g = build(m, cluster, profile, Knobs.uniform(m.layers, r, **kw))
    rnd = random.Random(case)
    for _, a in g.nodes(data=True):  # jitter so that ties and interference overlaps differ
        a["duration_us"] *= rnd.uniform(0.5, 2.0)
    roles = g.copy()
    roles.graph["roles"] = ("r0",)
    for prio, strict in ((None, False), (None, True), (topo_priority(g, rnd), False), (topo_priority(g, rnd), True),
                         ({t: rnd.random() for t in g}, False)):
        want, got = simulate(g, prio, strict=strict), simulate(roles, prio, strict=strict)
        assert "role" in got.df.columns and "role" not in want.df.columns  # dispatched by the attribute
        cols = ["task", "kind", "rank", "resource", "start_us", "end_us"]
        assert got.df[cols].sort_values("task").to_numpy().tolist() == \
            want.df[cols].sort_values("task").to_numpy().tolist()
        assert got.makespan_us == want.makespan_us


def pipeline(interference: tuple[float, float]) -> nx.DiGraph:
    """Two stages, two micro-batches: F{b}@s0 (10 µs) -> send{b} (3 µs, joins s0 and s1) ->
    F{b}@s1 (5 µs); and ar1, a stage-1 all-reduce (4 µs) after F0@s1."""
    g = new_graph(("s0", "s1"), interference=interference)
    for b in range(2):
        add_task(g, f"F{b}@s0", kind="attn_fwd", role="s0", duration_us=10.0, deps=[f"F{b - 1}@s0"] if b else [])
        add_task(g, f"send{b}", kind="p2p", resource="comm_inter", roles=("s0", "s1"), duration_us=3.0,
                 deps=[f"F{b}@s0"], op="send_recv")
        add_task(g, f"F{b}@s1", kind="attn_fwd", role="s1", duration_us=5.0, deps=[f"send{b}"])
    add_task(g, "ar1", kind="tp_ar", resource="comm_intra", role="s1", duration_us=4.0, deps=["F0@s1"],
             op="all_reduce")
    return g


def rows(tl) -> dict[tuple[str, str], tuple[float, float]]:
    df = tl.df
    return {(t, r): (s, e) for t, r, s, e in zip(df["task"], df["role"], df["start_us"], df["end_us"])}


def assert_no_double_booking(tl) -> None:
    """No resource of a role (nor a shared one) runs two tasks at once."""
    df = tl.df.drop_duplicates(["task", "resource", "start_us"]).copy()
    df["key"] = [r if "@" in r else f"{r}@{role}" for r, role in zip(df["resource"], df["role"])]
    for key, grp in df.groupby("key"):
        iv = sorted(zip(grp["start_us"], grp["end_us"]))
        for (_, e0), (s1, _) in zip(iv, iv[1:]):
            assert s1 >= e0 - 1e-9, key


def test_two_stage_pipeline_by_hand() -> None:
    """No interference: F0@s0 [0,10), send0 [10,13) on both stages, F1@s0 [10,20) beside it,
    F0@s1 [13,18), ar1 [18,22), send1 [20,23), F1@s1 [23,28)."""
    tl = simulate(pipeline((1.0, 1.0)))
    assert rows(tl) == {("F0@s0", "s0"): (0.0, 10.0), ("send0", "s0"): (10.0, 13.0), ("send0", "s1"): (10.0, 13.0),
                        ("F1@s0", "s0"): (10.0, 20.0), ("F0@s1", "s1"): (13.0, 18.0), ("ar1", "s1"): (18.0, 22.0),
                        ("send1", "s0"): (20.0, 23.0), ("send1", "s1"): (20.0, 23.0), ("F1@s1", "s1"): (23.0, 28.0)}
    assert tl.makespan_us == 28.0
    assert_no_double_booking(tl)
    assert tl.busy_us(0) == {"compute": 20.0, "comm_inter": 6.0}  # rank = the role's index
    assert tl.order(1) == ["send0", "F0@s1", "ar1", "send1", "F1@s1"]


def test_interference_stays_inside_the_roles_a_task_touches() -> None:
    """Compute at half speed beside a collective of its role: F1@s0 does 1.5 µs during
    send0 [10,13), then 8.5 alone: ends 21.5, though ar1 (stage 1 only) runs [18,22).
    send1 [21.5,24.5), F1@s1 [24.5,29.5); F0@s1 [13,18) runs beside nothing."""
    tl = simulate(pipeline((2.0, 1.0)))
    r = rows(tl)
    assert r["F1@s0", "s0"] == pytest.approx((10.0, 21.5))
    assert r["F0@s1", "s1"] == (13.0, 18.0) and r["ar1", "s1"] == (18.0, 22.0)
    assert r["send1", "s1"] == pytest.approx((21.5, 24.5)) and r["F1@s1", "s1"] == pytest.approx((24.5, 29.5))
    assert_no_double_booking(tl)


def test_shared_link_and_per_role_durations() -> None:
    """A (every role; 4 µs on attn, 6 on expert) -> T1, T2 on the one shared link@a2e: T1
    waits for A in both roles [6,8), T2 for the link [8,10); E (expert only) after T2."""
    g = new_graph(("attn", "expert"))
    add_task(g, "A", kind="attn_fwd", duration_us=4.0, duration_by_role_us={"expert": 6.0})
    for t in ("T1", "T2"):
        add_task(g, t, kind="a2e", resource="link@a2e", roles=("attn", "expert"), duration_us=2.0, deps=["A"])
    add_task(g, "E", kind="expert_fwd", role="expert", duration_us=1.0, deps=["T2"])
    r = rows(simulate(g))
    assert r["A", "attn"] == (0.0, 4.0) and r["A", "expert"] == (0.0, 6.0)
    assert r["T1", "attn"] == (6.0, 8.0) and r["T2", "expert"] == (8.0, 10.0) and r["E", "expert"] == (10.0, 11.0)
    strict = rows(simulate(g, {"A": 0, "T2": 1, "T1": 2, "E": 3}, strict=True))
    assert strict["T2", "attn"] == (6.0, 8.0) and strict["T1", "attn"] == (8.0, 10.0)


def test_bad_role_graphs_are_rejected() -> None:
    g = new_graph(("s0", "s1"))
    add_task(g, "a", kind="attn_fwd", role="s0", duration_us=1.0)
    add_task(g, "b", kind="attn_fwd", role="s1", duration_us=1.0, deps=["a"])
    with pytest.raises(MoeschedError, match="runs in none of them"):
        simulate(g)
    g = new_graph(("s0",))
    add_task(g, "a", kind="attn_fwd", role="s9", duration_us=1.0)
    with pytest.raises(MoeschedError, match="unknown or repeated roles"):
        simulate(g)
    with pytest.raises(MoeschedError, match="unique names"):
        new_graph(("all",))
    g = new_graph(("s0",))
    add_task(g, "a", kind="attn_fwd", duration_us=1.0)
    add_task(g, "b", kind="attn_fwd", duration_us=1.0, deps=["a"])
    with pytest.raises(MoeschedError, match="never ran"):
        simulate(g, {"a": 1.0, "b": 0.0}, strict=True)
    assert ROLE_COLUMNS == COLUMNS + ["role"]


def test_host_costs_apply_only_to_strict_runs() -> None:
    """List scheduling ignores host costs in both simulators; a strict run of a role graph with
    host costs is refused (the host model is per rank, not per role)."""
    m = PRESETS["GPT2-Tiny-MoE"]
    g = build(m, Cluster(1, 4), Profile.load("h200x4-nvlink"), Knobs.uniform(m.layers, 2))
    assert g.graph.get("host_lag_us") is not None
    roles = g.copy()
    roles.graph["roles"] = ("r0",)
    assert simulate(roles).makespan_us == simulate(g).makespan_us
    with pytest.raises(MoeschedError, match="host model"):
        simulate(roles, strict=True)
