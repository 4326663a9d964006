"""Expert placement: limits, the cost model, the policies and the replay (moesched.placement*)."""
from __future__ import annotations

import random
import time

import pytest

from moesched.cluster import Cluster
from moesched.dense import moe_part
from moesched.errors import MoeschedError
from moesched.models import MoEModel
from moesched.network import load_network
from moesched.placement import Placement, balance_ratio
from moesched.placement_cost import PlacementCost
from moesched.placement_policies import PolicyConfig, eplb, flexmoe_greedy, hot_replicas
from moesched.placement_replay import POLICIES, replay, zipf_loads
from moesched.placement_search import objective, search
from moesched.profile import Profile

MODEL = moe_part(MoEModel.from_name("DeepSeek-V2-Lite", layers=3))  # its 2 MoE layers


@pytest.fixture(scope="module")
def cost4() -> PlacementCost:
    return PlacementCost(MODEL, Cluster(1, 4), Profile.load("h200x4-nvlink"))


@pytest.fixture(scope="module")
def cost32() -> PlacementCost:
    return PlacementCost(MODEL, Cluster(4, 8, network=load_network("dgx-h200")), Profile.load("h200x4-nvlink"))


@pytest.mark.parametrize("replicas, slots, msg", [
    ([[0], [0], [1]], 1, "over its 1 slots"),
    ([[0, 0], [1]], 2, "named twice"),
    ([[0], []], 2, "no replica"),
    ([[0], [2]], 2, "outside"),
])
def test_bad_placements_are_refused(replicas, slots, msg):
    with pytest.raises(MoeschedError, match=msg):
        Placement.of(replicas, 2, slots)


def test_rank_loads_split_an_expert_evenly_over_its_replicas():
    p = Placement.of([[0, 1], [1]], 2, 2)
    assert p.rank_loads([10.0, 4.0]) == [5.0, 9.0]
    assert balance_ratio([5.0, 9.0]) == pytest.approx(9 / 7)
    assert Placement.static(4, 2).replicas == ((0,), (0,), (1,), (1,))
    assert p.moves(Placement.of([[0, 1], [0, 1]], 2, 2)) == [(1, 1, 0)]


def test_migration_moves_parameters_and_adam_state(cost4):
    # bf16: 2 bytes of parameter + 8 of Adam moments + 4 of fp32 master copy per parameter
    assert cost4.expert_state_bytes == MODEL.expert_params() * 14
    old = Placement.static(64, 4, 18)
    new = Placement.of([list(rs) + ([1] if e == 0 else []) for e, rs in enumerate(old.replicas)], 4, 18)
    assert cost4.migrate_us(old, new) == pytest.approx(cost4.move_us(cost4.expert_state_bytes, False))
    assert cost4.migrate_us(old, old) == 0.0
    two = Placement.of([list(rs) + ([1] if e in (0, 32) else []) for e, rs in enumerate(old.replicas)], 4, 18)
    assert cost4.migrate_us(old, two) == pytest.approx(cost4.move_us(2 * cost4.expert_state_bytes, False, moves=2))
    # the shipped profile carries the measured device -> host -> device copy (one H200): a
    # move pays the link's bandwidth plus the copy's fixed cost (20.6 µs), once per expert
    assert cost4.measured_move is not None and 10.0 < cost4.measured_move.alpha_us < 100.0
    b = cost4.expert_state_bytes
    assert cost4.migrate_us(old, new) == pytest.approx(cost4.link_us(b, False) + cost4.measured_move.alpha_us)
    assert cost4.migrate_us(old, two) < 2 * cost4.migrate_us(old, new) * 1.001
    assert cost4.migrate_us(old, new) < cost4.measured_move(b)  # the host copy's bandwidth is not paid


def test_a_replica_costs_an_all_reduce_and_relieves_the_busiest_rank(cost4):
    loads = [1000.0 * (10 if e == 0 else 1) for e in range(64)]
    base = Placement.static(64, 4, 17)
    rep = Placement.of([list(rs) + ([3] if e == 0 else []) for e, rs in enumerate(base.replicas)], 4, 17)
    a, b = cost4.layer(base, loads), cost4.layer(rep, loads)
    assert a.sync_us == 0 and b.sync_us > 0
    assert b.sync_us == pytest.approx(cost4.allreduce_us((0, 3), cost4.expert_param_bytes))
    assert b.compute_us < a.compute_us and b.balance < a.balance
    assert cost4.ideal(loads).total_us <= b.total_us


def test_eplb_replicates_the_heavy_expert():
    p = eplb([10.0, 1.0, 1.0, 1.0], 2, 3)
    assert p.replicas[0] == (0, 1)
    assert sum(len(rs) for rs in p.replicas) == 6


def _random_loads(rng: random.Random, experts: int) -> list[float]:
    return zipf_loads(experts, 1, 1, 10_000 * experts, rng.uniform(0.5, 1.5), seed=rng.randrange(1000))[0][0]


def test_policies_keep_limits_and_lower_the_balance_ratio(cost32):
    rng = random.Random(0)
    for _ in range(5):
        loads = _random_loads(rng, 64)
        base = Placement.static(64, 32, 3)
        before = balance_ratio(base.rank_loads(loads))
        for p in (eplb(loads, 32, 3), flexmoe_greedy(base, loads, cost32, 50, 1.2), hot_replicas(base, loads),
                  search(base, loads, cost32, 50)):
            p.check()  # never over a slot, never twice on a rank, every expert somewhere
            assert balance_ratio(p.rank_loads(loads)) < before


def test_search_is_never_worse_than_its_starts(cost32):
    rng = random.Random(1)
    for _ in range(3):
        loads = _random_loads(rng, 64)
        cur = Placement.static(64, 32, 3)
        best = objective(search(cur, loads, cost32, 50), cur, loads, cost32, 50)
        for start in (cur, flexmoe_greedy(cur, loads, cost32, 50, 1.0), eplb(loads, 32, 3)):
            assert best <= objective(start, cur, loads, cost32, 50) + 1e-6


def test_a_move_that_evens_only_the_mean_load_is_not_made(cost4):
    """Experts 0 and 1 (both on rank 0) take turns being hot: their mean asks to split
    them, but on every observed step the hot one alone sets its rank's load, so a swap
    buys nothing and the search keeps the current placement (no free slot: no replica)."""
    base = Placement.static(64, 4, 16)
    small, hot = 100.0, 20000.0
    steps = [[hot if e == t % 2 else small for e in range(64)] for t in range(10)]
    mean = [sum(col) / len(col) for col in zip(*steps)]
    assert search(base, mean, cost4, 25) != base
    assert search(base, mean, cost4, 25, observed=steps) == base


def test_all_to_all_price_never_falls_with_more_copies():
    """GPT2-XL-MoE's measured in-situ all-to-all curve dips (it pools chunked and unchunked
    calibration runs): the placement price keeps its running maximum, so loading the
    busiest rank more never looks cheaper."""
    cost = PlacementCost(moe_part(MoEModel.from_name("GPT2-XL-MoE", layers=2)), Cluster(1, 4),
                         Profile.load("h200x4-nvlink"))
    xs = [cost.sent_copies * (1 + i / 20) for i in range(61)]
    raw = [cost._a2a_one_us(x) for x in xs]
    assert raw[-1] < 0.5 * raw[0]  # the curve itself falls (644 -> 247 µs from 1x to 4x the copies)
    priced = [cost.a2a_us(x) for x in xs]
    assert all(b >= a - 1e-9 for a, b in zip(priced, priced[1:]))
    assert all(p >= 4 * r - 1e-9 for p, r in zip(priced, raw))


def test_decision_for_64_experts_on_32_ranks_under_100_ms(cost32):
    loads = zipf_loads(64, 1, 1, 640_000, 1.2)[0][0]
    base = Placement.static(64, 32, 3)
    search(base, loads, cost32, 50)  # warm the cost caches
    times = []
    for _ in range(3):  # best of three: the machine is shared
        t = time.perf_counter()
        search(base, loads, cost32, 50)
        times.append(time.perf_counter() - t)
    assert min(times) < 0.1


def test_replay_moesched_matches_the_best_non_dropping_policy(cost4):
    loads = zipf_loads(64, 2, 40, cost4.sent_copies * 4, 1.0, drift_steps=100)
    res, ideal = replay(loads, cost4, 17, POLICIES, PolicyConfig(interval=10))
    for name, r in res.items():
        assert len(r.step_us) == 40 and r.replica_memory_bytes >= 0
        assert name == "capacity" or ideal.total_us <= r.total_us  # dropping computes fewer copies
    assert res["static"].migrations == 0 and res["static"].dropped == 0
    assert res["capacity"].dropped > 0
    assert res["moesched"].total_us <= min(r.total_us for n, r in res.items() if n != "capacity")
    assert sum(res["moesched"].balance) < sum(res["static"].balance)


def test_bad_loads_and_config_are_refused(cost4):
    with pytest.raises(MoeschedError, match="experts"):
        replay([[[1.0] * 63]], cost4, 17, ["static"], PolicyConfig())
    with pytest.raises(MoeschedError, match="negative"):
        replay([[[-1.0] * 64]], cost4, 17, ["static"], PolicyConfig())
    with pytest.raises(MoeschedError, match="interval"):
        PolicyConfig(interval=0)
    with pytest.raises(MoeschedError, match="unknown placement policy"):
        replay([[[1.0] * 64]], cost4, 17, ["nope"], PolicyConfig())


def test_the_simulator_prices_a_placement_like_the_cost_model(cost4):
    from moesched.placement_sim import even_sources, placement_routing, simulate_step
    m = cost4.model
    loads = zipf_loads(64, 2, 1, cost4.sent_copies * 4, 1.2, top_k=6)[0]
    static = [Placement.static(64, 4, 17)] * 2
    balanced = [eplb(n, 4, 17) for n in loads]
    src = even_sources(loads, 4)
    r = placement_routing(balanced, src)
    for l, n in enumerate(loads):  # every rank receives its replicas' share of every expert
        recv = [sum(r.copies[l][s][d] for s in range(4)) for d in range(4)]
        assert recv == pytest.approx(balanced[l].rank_loads(n), abs=8)
    sim_static = simulate_step(m, cost4.cluster, cost4.profile, static, src)
    sim_bal = simulate_step(m, cost4.cluster, cost4.profile, balanced, src)
    model_static = sum(cost4.dense_us + cost4.layer(p, n).total_us for p, n in zip(static, loads))
    model_bal = sum(cost4.dense_us + cost4.layer(p, n).total_us for p, n in zip(balanced, loads))
    assert sim_bal < sim_static and model_bal < model_static
    # the two views of the gain agree within 10% (the simulator overlaps, the cost model serialises)
    assert sim_static / sim_bal == pytest.approx(model_static / model_bal, rel=0.1)


def test_replica_all_reduces_are_graph_tasks_after_their_layers_weight_gradients(cost4):
    from moesched import schedules
    from moesched.graph import build
    from moesched.placement_sim import add_replica_syncs, even_sources, simulate_step
    m = cost4.model
    base = Placement.static(64, 4, 18)
    rep = Placement.of([list(rs) + ([3] if e in (0, 1) else []) for e, rs in enumerate(base.replicas)], 4, 18)
    g = build(m, cost4.cluster, cost4.profile, schedules.get("vanilla").schedule(m, cost4.cluster, cost4.profile).knobs)
    add_replica_syncs(g, cost4, [base, rep])
    names = [n for n in g if n.startswith("P.replica_ar")]
    assert names == ["P.replica_ar.L1"]  # layer 0 has no replica
    a = g.nodes["P.replica_ar.L1"]
    one = cost4.allreduce_us((0, 3), cost4.expert_param_bytes)
    assert a["duration_by_rank_us"] == pytest.approx([2 * one, 0.0, 0.0, 2 * one])
    preds = set(g.predecessors("P.replica_ar.L1"))
    assert preds and preds == {n for n, x in g.nodes(data=True) if x["kind"] == "expert_dw" and x["layer"] == 1}
    loads = [[1000.0] * 64] * 2
    src = even_sources(loads, 4)
    plain = simulate_step(m, cost4.cluster, cost4.profile, [base, base], src)
    synced = simulate_step(m, cost4.cluster, cost4.profile, [base, rep], src)
    # overlapped with the backward of layer 0: at most the all-reduces slowed by the profile's
    # measured interference (communication beside compute)
    assert plain < synced <= plain + 2 * one * g.graph["interference"][1] + 1e-6
    moved = simulate_step(m, cost4.cluster, cost4.profile, [base, rep], src, previous=[base, base])
    assert moved == pytest.approx(synced + cost4.migrate_us(base, rep))


def test_placement_schedule_round_trip_and_bad_files(tmp_path):
    from moesched.placement_schedule import PlacementSchedule
    a, b = Placement.static(4, 2, 3), Placement.of([[0, 1], [0], [1], [1]], 2, 3)
    s = PlacementSchedule("eplb", ((0, (a, a)), (5, (b, a))))
    s.save(tmp_path / "s.json")
    t = PlacementSchedule.load(tmp_path / "s.json")
    assert t == s and t.at(5) == (b, a) and t.at(4) is None
    d = s.to_dict()
    d["changes"][1]["layers"][0]["replicas"][0] = [0, 0]
    with pytest.raises(MoeschedError, match="named twice"):
        PlacementSchedule.from_dict(d)
    with pytest.raises(MoeschedError, match="step 0"):
        PlacementSchedule("x", ((3, (a,)),))
    with pytest.raises(MoeschedError, match="differs"):
        PlacementSchedule("x", ((0, (a,)), (2, (a, a))))


def test_a_split_experts_all_to_alls_carry_every_copy_to_every_shard(cost4):
    """placement_traffic sends each copy to a split expert to all its shards;
    placement_routing computes 1/n on each. In the simulated graph the all-to-alls follow
    the traffic and the expert tasks the compute, and the split step is priced above the
    same placement with the experts replicated when only the traffic differs."""
    from moesched import schedules
    from moesched.graph import build
    from moesched.placement_sim import even_sources, placement_routing, placement_traffic
    from moesched.routing import apply_routing
    m = cost4.model
    base = Placement.static(64, 4, 18)
    reps = [list(rs) + ([3] if e in (0, 1) else []) for e, rs in enumerate(base.replicas)]
    split, replicated = Placement.of(reps, 4, 18, split=[0, 1]), Placement.of(reps, 4, 18)
    loads = [[4000.0] * 2 + [500.0] * 62] * 2
    src = even_sources(loads, 4)
    comp, moved = placement_routing([split] * 2, src), placement_traffic([split] * 2, src)
    assert comp == placement_routing([replicated] * 2, src) == placement_traffic([replicated] * 2, src)
    extra = [sum(moved.copies[0][s][d] - comp.copies[0][s][d] for s in range(4)) for d in range(4)]
    assert extra == pytest.approx([4000, 0, 0, 4000], abs=8)  # both shards receive experts 0 and 1 whole
    sched = schedules.get("vanilla").schedule(m, cost4.cluster, cost4.profile)

    def durations(traffic):
        g = apply_routing(build(m, cost4.cluster, cost4.profile, sched.knobs), m, cost4.cluster, cost4.profile,
                          comp, traffic)
        return {k: max(a["duration_by_rank_us"]) for k, a in g.nodes(data=True)
                if a["kind"] in ("expert_fwd", "dispatch") and a.get("hop") is None}
    with_split, as_replicas = durations(moved), durations(None)
    assert any(k for k in with_split if "dispatch" in k)
    for k, us in with_split.items():
        assert us > as_replicas[k] if "dispatch" in k else us == pytest.approx(as_replicas[k])
    from moesched.routing import Routing
    bad = Routing.from_lists([[[0] * 3] * 3] * 2)
    with pytest.raises(MoeschedError, match="traffic"):
        apply_routing(build(m, cost4.cluster, cost4.profile, sched.knobs), m, cost4.cluster, cost4.profile, comp, bad)
