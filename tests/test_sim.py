"""Simulator: every timeline is feasible, bounded below, replayable and stable.

Golden makespans live in tests/golden/makespans.json. After an intended change to the
graph, the simulator or the shipped analytic profile, regenerate them with

    python -m tests.test_sim --regen      (from the repository root)

and say why in the commit message.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.models import EXPERT_KINDS, PRESETS, MoEModel
from moesched.plan import from_timeline
from moesched.profile import Profile
from moesched.sim import Timeline, critical_path_us, simulate

GOLDEN = Path(__file__).parent / "golden" / "makespans.json"
NVLINK = Profile.load("analytic-h200x4-nvlink")
TWO_NODES = Profile.load("analytic-h200x4-2nodes")
REL = 1e-9
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- checks ---------------------------------------------------------------------------
def durations(g: nx.DiGraph, t: str) -> list[float]:
    a = g.nodes[t]
    r = int(g.graph.get("ranks", 1))
    return list(a.get("duration_by_rank_us") or [a["duration_us"]] * r)


def check_timeline(g: nx.DiGraph, tl: Timeline, exact_durations: bool) -> None:
    """Every task once per rank; no serial resource runs two tasks at once; no task starts
    before its predecessors end; each task lasts at least its duration."""
    R = int(g.graph.get("ranks", 1))
    df = tl.df
    assert len(df) == len(g) * R
    tol = 1e-9 * max(1.0, float(df["end_us"].max()))
    start = {(t, k): s for t, k, s in zip(df["task"], df["rank"], df["start_us"])}
    end = {(t, k): e for t, k, e in zip(df["task"], df["rank"], df["end_us"])}
    for (rank, res), grp in df.groupby(["rank", "resource"]):
        iv = sorted(zip(grp["start_us"], grp["end_us"]))
        for (s0, e0), (s1, e1) in zip(iv, iv[1:]):
            assert s1 >= e0 - tol, f"{res} on rank {rank} overlaps at {s1}"
    for t, a in g.nodes(data=True):
        d = durations(g, t)
        for k in range(R):
            need = d[k] if a["resource"] == "compute" else max(d)
            took = end[t, k] - start[t, k]
            assert took >= need - tol
            if exact_durations:
                assert took == pytest.approx(need, rel=REL, abs=tol)
            if a["resource"] != "compute":
                assert start[t, k] == start[t, 0] and end[t, k] == end[t, 0]
            for p in g.predecessors(t):
                ready = end[p, k] if a["resource"] == "compute" else max(end[p, j] for j in range(R))
                assert start[t, k] >= ready - tol, f"{t} starts before {p} ends"


def busiest_work_us(g: nx.DiGraph) -> float:
    work: dict[str, float] = {}
    for t, a in g.nodes(data=True):
        work[a["resource"]] = work.get(a["resource"], 0.0) + max(durations(g, t))
    return max(work.values())


# ---- random scenarios -------------------------------------------------------------------
@st.composite
def scenarios(draw) -> tuple[nx.DiGraph, random.Random]:
    """A small random model, cluster, knobs, and durations jittered by up to 2x."""
    layers = draw(st.integers(1, 3))
    m = MoEModel(name="h", layers=layers, d_model=draw(st.sampled_from([32, 64])), heads=4,
                 seq_len=draw(st.sampled_from([4, 6, 8])), micro_batch=draw(st.sampled_from([1, 2, 4])),
                 ffn_hidden=draw(st.sampled_from([64, 256])), experts=draw(st.sampled_from([4, 8])),
                 top_k=draw(st.integers(1, 2)), capacity_factor=draw(st.sampled_from([None, 0.8, 1.25])),
                 shared_experts=draw(st.integers(0, 1)), expert_kind=draw(st.sampled_from(EXPERT_KINDS)))
    at = draw(st.booleans())
    divs = [d for d in range(1, 17) if m.tokens % d == 0 and (not at or m.micro_batch % d == 0)]
    degrees = st.lists(st.sampled_from(divs), min_size=layers, max_size=layers)
    knobs = Knobs(r_fwd=draw(degrees), r_bwd=draw(degrees), at_chunked=at,
                  grad_chunk_bytes=draw(st.one_of(st.none(), st.integers(2_000, 200_000))),
                  grad_sync=draw(st.sampled_from(["overlap", "after_backward"])),
                  a2a=draw(st.sampled_from(["flat", "hierarchical"])), serialize=draw(st.integers(0, 5)) == 0)
    if draw(st.booleans()):
        cluster, profile = Cluster(2, 2, ep=draw(st.sampled_from([None, 2, 4]))), TWO_NODES
    else:
        cluster, profile = Cluster(1, 4, ep=draw(st.sampled_from([None, 2, 4]))), NVLINK
    g = build(m, cluster, profile, knobs)
    rnd = draw(st.randoms(use_true_random=False))
    for _, a in g.nodes(data=True):
        a["duration_us"] *= rnd.uniform(0.5, 2.0)
    return g, rnd


def random_topological_priority(g: nx.DiGraph, rnd: random.Random) -> dict[str, float]:
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


def priorities(g: nx.DiGraph, rnd: random.Random, how: str) -> dict[str, float] | None:
    if how == "seq":
        return None
    if how == "topo":
        return random_topological_priority(g, rnd)
    return {t: rnd.random() for t in g}


slowdowns = st.one_of(st.just(1.0), st.floats(1.0, 3.0))


@PROPS
@given(scenarios(), st.sampled_from(["seq", "topo", "random"]), st.booleans(), slowdowns, slowdowns)
def test_timelines_are_feasible_and_bounded(sc, how: str, strict: bool, sc_f: float, sm_f: float) -> None:
    g, rnd = sc
    strict = strict and how != "random"  # a strict order must be topological
    tl = simulate(g, priorities(g, rnd, how), strict=strict, compute_slowdown=sc_f, comm_slowdown=sm_f)
    check_timeline(g, tl, exact_durations=sc_f == sm_f == 1.0)
    assert tl.makespan_us >= critical_path_us(g) * (1 - REL)
    assert tl.makespan_us >= busiest_work_us(g) * (1 - REL)
    assert 0.0 <= tl.exposed_comm_us() <= tl.makespan_us * (1 + REL)
    if g.graph["knobs"].grad_sync == "after_backward":
        df = tl.df
        assert df.loc[df["kind"] == "grad_ar", "start_us"].min() >= df.loc[df["phase"] == "bwd", "end_us"].max()
    order = tl.order()
    pos = {t: i for i, t in enumerate(order)}
    assert len(order) == len(g) and all(pos[a] < pos[b] for a, b in g.edges)


@PROPS
@given(scenarios(), st.sampled_from(["seq", "random"]), slowdowns, slowdowns)
def test_strict_replay_reproduces_makespan(sc, how: str, sc_f: float, sm_f: float) -> None:
    g, rnd = sc
    tl = simulate(g, priorities(g, rnd, how), compute_slowdown=sc_f, comm_slowdown=sm_f)
    replay_pr = {t: float(i) for i, t in enumerate(tl.order())}
    again = simulate(g, replay_pr, strict=True, compute_slowdown=sc_f, comm_slowdown=sm_f)
    assert again.makespan_us == pytest.approx(tl.makespan_us, rel=REL)
    a = tl.df.set_index(["task", "rank"])["start_us"]
    b = again.df.set_index(["task", "rank"])["start_us"]
    assert ((a - b.loc[a.index]).abs() <= REL * max(1.0, tl.makespan_us)).all()


@PROPS
@given(scenarios(), st.sampled_from(["seq", "topo"]), st.floats(1.0, 3.0), st.floats(1.0, 3.0))
def test_interference_never_shortens_a_fixed_order(sc, how: str, sc_f: float, sm_f: float) -> None:
    """For a fixed issue order (strict mode, what the executor replays), slowing tasks
    down can only delay every event. (Greedy list scheduling is exempt: Graham's anomalies
    allow a slower task to shorten a greedy schedule.)"""
    g, rnd = sc
    pr = priorities(g, rnd, how)
    base = simulate(g, pr, strict=True, compute_slowdown=1.0, comm_slowdown=1.0)
    slow = simulate(g, pr, strict=True, compute_slowdown=sc_f, comm_slowdown=sm_f)
    assert slow.makespan_us >= base.makespan_us * (1 - REL)
    s0 = base.df.set_index(["task", "rank"])["end_us"]
    s1 = slow.df.set_index(["task", "rank"])["end_us"]
    assert (s1.loc[s0.index] >= s0 - REL * max(1.0, base.makespan_us)).all()


def test_greedy_anomaly_is_why_the_fixed_order_is_tested() -> None:
    """Graham's anomaly: under greedy list scheduling, compute slowed 1.5x lets the long
    collective 2 take the link before 1 becomes ready, which shortens the step from 21 to
    19.67 µs. Replaying the unslowed order strictly does not shorten it."""
    g = nx.DiGraph(interference=(1.0, 1.0))
    spec = {0: ("compute", 4.0), 1: ("comm_intra", 2.0), 2: ("comm_intra", 6.0), 3: ("compute", 6.0),
            4: ("compute", 2.0), 5: ("comm_intra", 5.0)}
    for t, (res, d) in spec.items():
        g.add_node(t, kind="k", layer=0, chunk=0, phase="fwd", resource=res, seq=t, duration_us=d)
    g.add_edges_from([(0, 1), (0, 4), (2, 3), (2, 4), (3, 4)])
    pr = {0: 0.14, 1: 0.43, 2: 0.80, 3: 0.13, 4: 0.85, 5: 0.38}
    base = simulate(g, pr, compute_slowdown=1.0)
    assert base.makespan_us == 21.0
    assert simulate(g, pr, compute_slowdown=1.5).makespan_us == pytest.approx(19.0 + 2 / 3)
    fixed = {t: float(i) for i, t in enumerate(base.order())}
    assert simulate(g, fixed, strict=True, compute_slowdown=1.5).makespan_us >= 21.0


def test_interference_default_comes_from_graph() -> None:
    m = PRESETS["GPT2-XL-MoE"]
    g = build(m, Cluster(1, 4), NVLINK, Knobs.uniform(m.layers, 2))
    assert g.graph["interference"] == (1.58, 1.0)
    tl = simulate(g)
    assert tl.meta["compute_slowdown"] == 1.58
    free = simulate(g, compute_slowdown=1.0)
    assert tl.makespan_us > free.makespan_us


def test_interference_per_collective() -> None:
    """A compute task beside an all-to-all and then beside a gradient all-reduce: each
    collective slows (and is slowed) by its own factors, by hand:
    X [0, 100) compute; A all-to-all [0, ...) and G all-reduce after A, on one link.
    A: compute at 1/1.0, A at 1/2.0 -> A's 10 µs take 20; X has done 20 by then.
    G: compute at 1/1.25, G at 1/4.0 -> G's 10 µs need 40 µs, X does 32 of its 80 left;
    X alone then: 48 more, ends at 108."""
    g = nx.DiGraph(ranks=1, interference=(1.0, 2.0), interference_by_op={"all_reduce": (1.25, 4.0)})
    for name, kind, res, seq, d in (("X", "attn_fwd", "compute", 0, 100.0), ("A", "dispatch", "comm_intra", 1, 10.0),
                                    ("G", "grad_ar", "comm_intra", 2, 10.0)):
        g.add_node(name, kind=kind, layer=0, chunk=0, phase="fwd", resource=res, seq=seq, duration_us=d)
    g.add_edge("A", "G")
    for strict in (False, True):
        tl = simulate(g, strict=strict)
        row = {t: (s, e) for t, s, e in zip(tl.df["task"], tl.df["start_us"], tl.df["end_us"])}
        assert row["A"] == pytest.approx((0.0, 20.0)) and row["G"] == pytest.approx((20.0, 60.0))
        assert row["X"] == pytest.approx((0.0, 108.0))
        assert tl.meta["interference_by_op"] == {"all_reduce": (1.25, 4.0)}
    one = simulate(g, compute_slowdown=1.0, comm_slowdown=2.0)  # an explicit pair overrides per collective
    assert one.df.set_index("task").at["G", "end_us"] == pytest.approx(40.0)


def test_serialized_step_is_the_sum_of_durations() -> None:
    m = PRESETS["Mixtral-7B-FSMoE"]
    g = build(m, Cluster(1, 4), NVLINK, Knobs.uniform(m.layers, 2, serialize=True))
    tl = simulate(g)
    total = sum(a["duration_us"] for _, a in g.nodes(data=True))
    assert tl.makespan_us == pytest.approx(total, rel=REL)
    assert tl.makespan_us == pytest.approx(critical_path_us(g), rel=REL)
    assert tl.exposed_comm_us() == pytest.approx(tl.busy_us()["comm_intra"], rel=REL)


def test_order_makes_a_valid_plan() -> None:
    m = PRESETS["GPT2-Tiny-MoE"]
    knobs = Knobs.uniform(m.layers, 4, r_bwd=2, grad_chunk_bytes=2**20)
    g = build(m, Cluster(1, 4), NVLINK, knobs)
    plan = from_timeline("test", m, Cluster(1, 4), knobs, simulate(g), NVLINK)
    plan.validate()


# ---- per-rank durations -----------------------------------------------------------------
def two_rank_graph() -> nx.DiGraph:
    g = nx.DiGraph(ranks=2, interference=(1.0, 1.0))
    def add(name: str, res: str, seq: int, by_rank: list[float]) -> None:
        g.add_node(name, kind=name, layer=0, chunk=0, phase="fwd", resource=res, seq=seq,
                   duration_us=max(by_rank), duration_by_rank_us=by_rank)
    add("A", "compute", 0, [10.0, 30.0])
    add("B", "compute", 1, [20.0, 1.0])
    add("C", "comm_intra", 2, [5.0, 8.0])
    add("D", "compute", 3, [1.0, 1.0])
    g.add_edge("A", "C")
    g.add_edge("C", "D")
    return g


def test_collective_waits_for_slowest_rank() -> None:
    g = two_rank_graph()
    tl = simulate(g)
    check_timeline(g, tl, exact_durations=True)
    row = {(t, k): (s, e) for t, k, s, e in zip(tl.df["task"], tl.df["rank"], tl.df["start_us"], tl.df["end_us"])}
    assert row["A", 0] == (0.0, 10.0) and row["A", 1] == (0.0, 30.0)
    assert row["B", 0] == (10.0, 30.0) and row["B", 1] == (30.0, 31.0)
    assert row["C", 0] == row["C", 1] == (30.0, 38.0)  # the slowest rank's A, then the longest C
    assert row["D", 0] == row["D", 1] == (38.0, 39.0)
    assert tl.makespan_us == 39.0
    assert tl.busy_us(0) == {"compute": 31.0, "comm_intra": 8.0}
    assert tl.busy_us(1) == {"compute": 32.0, "comm_intra": 8.0}
    assert tl.exposed_comm_us(0) == 8.0 and tl.exposed_comm_us(1) == 7.0  # rank 1 runs B during 30..31


def test_per_rank_durations_on_a_built_graph() -> None:
    m = MoEModel(name="s", layers=2, d_model=64, heads=4, seq_len=8, micro_batch=2, ffn_hidden=128, experts=4,
                 top_k=2)
    g = build(m, Cluster(1, 4), NVLINK, Knobs.uniform(2, 2))
    g.graph["ranks"] = 2
    for _, a in g.nodes(data=True):
        slow = 3.0 if a["kind"] == "expert_fwd" else 1.0
        a["duration_by_rank_us"] = [a["duration_us"], a["duration_us"] * slow]
    tl = simulate(g)
    check_timeline(g, tl, exact_durations=False)
    end = {(t, k): e for t, k, e in zip(tl.df["task"], tl.df["rank"], tl.df["end_us"])}
    start = {(t, k): s for t, k, s in zip(tl.df["task"], tl.df["rank"], tl.df["start_us"])}
    for l in range(2):
        for c in range(2):
            e, cb = f"L{l}.F.expert_fwd.c{c}", f"L{l}.F.combine.c{c}"
            assert end[e, 1] > end[e, 0]
            assert start[cb, 0] >= end[e, 1] * (1 - REL)
    one = simulate(build(m, Cluster(1, 4), NVLINK, Knobs.uniform(2, 2)))
    assert tl.makespan_us > one.makespan_us


def test_bad_per_rank_durations_and_deadlock() -> None:
    g = two_rank_graph()
    g.nodes["A"]["duration_by_rank_us"] = [1.0]
    with pytest.raises(MoeschedError, match="per-rank durations"):
        simulate(g)
    g = two_rank_graph()
    with pytest.raises(MoeschedError, match="deadlocks"):  # D before A on the compute stream
        simulate(g, {"D": 0.0, "A": 1.0, "B": 2.0, "C": 3.0}, strict=True)


# ---- golden makespans -------------------------------------------------------------------
GOLDEN_KNOBS = {
    "r1": dict(r=1),
    "r4b2-32MB": dict(r=4, r_bwd=2, grad_chunk_bytes=32 * 2**20),
    "r2-serial-after": dict(r=2, grad_sync="after_backward", serialize=True),
}
GOLDEN_MODELS = ("GPT2-XL-MoE", "Mixtral-7B-FSMoE")


def golden_makespans() -> dict[str, float]:
    out = {}
    for name in GOLDEN_MODELS:
        m = PRESETS[name]
        for label, kw in GOLDEN_KNOBS.items():
            g = build(m, Cluster(1, 4), NVLINK, Knobs.uniform(m.layers, **kw))
            out[f"{name}/{label}"] = simulate(g).makespan_us
    return out


def test_golden_makespans() -> None:
    want = json.loads(GOLDEN.read_text())
    assert want["profile_digest"] == NVLINK.digest(), \
        "the analytic profile changed; regenerate: python -m tests.test_sim --regen"
    got = golden_makespans()
    assert set(got) == set(want["makespans_us"])
    for key, us in want["makespans_us"].items():
        assert got[key] == pytest.approx(us, rel=REL), key


if __name__ == "__main__":
    if "--regen" not in sys.argv:
        sys.exit("usage: python -m tests.test_sim --regen  (rewrites tests/golden/makespans.json)")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"profile": NVLINK.name, "profile_digest": NVLINK.digest(),
                                  "makespans_us": golden_makespans()}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
