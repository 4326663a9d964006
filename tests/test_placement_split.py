"""Split experts: an expert's hidden dimension sharded over its ranks (Placement.split)."""
from __future__ import annotations

import pytest

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.models import MoEModel
from moesched.placement import Placement
from moesched.placement_cost import PlacementCost
from moesched.placement_policies import _with, hot_replicas
from moesched.placement_schedule import PlacementSchedule
from moesched.placement_search import search
from moesched.profile import Profile

# expert 0 split over ranks 0 and 2, the rest two per rank
SPLIT = [[0, 2], [0], [1], [1], [2], [2], [3], [3]]


@pytest.fixture(scope="module")
def cost() -> PlacementCost:
    return PlacementCost(MoEModel.from_name("Mixtral-7B-FSMoE"), Cluster(1, 4), Profile.load("h200x4-nvlink"))


def test_split_on_one_rank_is_refused_in_one_line():
    with pytest.raises(MoeschedError) as e:
        Placement.of([[0]] + [[r // 2] for r in range(2, 9)], 4, 3, split=[0])
    assert "split expert 0 needs at least 2 ranks" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(MoeschedError, match="outside"):
        Placement.of(SPLIT, 4, 3, split=[8])


def test_default_is_unsplit_and_old_dicts_load():
    p = Placement.static(8, 4, 3)
    assert p.split == (False,) * 8 and "split" not in p.to_dict()
    assert Placement.from_dict({"ranks": 4, "slots": 3, "replicas": [[e // 2] for e in range(8)]}) == p
    assert Placement.trusted(p.replicas, 4, 3) == p


def test_dict_round_trip_and_schedule_carry_split(tmp_path):
    p = Placement.of(SPLIT, 4, 3, split=[0])
    assert p.to_dict()["split"] == [0] and Placement.from_dict(p.to_dict()) == p
    sched = PlacementSchedule("moesched", ((0, (Placement.static(8, 4, 3),)), (25, (p,))))
    sched.save(tmp_path / "s.json")
    assert PlacementSchedule.load(tmp_path / "s.json").changes[1][1][0].split[0]
    with pytest.raises(MoeschedError, match="optional split"):
        Placement.from_dict({**p.to_dict(), "extra": 1})


@pytest.mark.parametrize("ranks, hidden", [([0, 2], 7), ([0, 1, 3], 10), ([1, 2, 3], 2)])
def test_shard_range_covers_hidden_disjointly(ranks, hidden):
    reps = [ranks] + [[e % 4] for e in range(1, 8)]
    p = Placement.of(reps, 4, 4, split=[0])
    got = [p.shard_range(0, r, hidden) for r in sorted(ranks)]
    assert got[0][0] == 0 and got[-1][1] == hidden
    assert all(a[1] == b[0] for a, b in zip(got, got[1:]))
    assert max(hi - lo for lo, hi in got) - min(hi - lo for lo, hi in got) <= 1
    assert p.shard_range(1, 1, hidden) == (0, hidden)
    with pytest.raises(MoeschedError, match="holds no part"):
        p.shard_range(1, 0, hidden)


def test_split_lowers_busiest_compute_not_its_received_copies(cost):
    loads = [900.0] + [160.0] * 7
    whole = Placement.of([[0], [0], [1], [1], [2], [2], [3], [3]], 4, 3)
    split = Placement.of(SPLIT, 4, 3, split=[0])
    assert split.rank_loads(loads)[0] == 450 + 160 < whole.rank_loads(loads)[0]
    assert split.received_loads(loads)[0] == whole.received_loads(loads)[0] == 1060
    assert split.received_loads(loads)[2] == 900 + 320
    a, b = cost.layer(whole, loads), cost.layer(split, loads)
    assert b.compute_us < a.compute_us and b.sync_us == 0.0 and b.a2a_us >= a.a2a_us
    replicated = Placement.of(SPLIT, 4, 3)
    assert cost.layer(replicated, loads).sync_us > 0  # the same ranks as replicas all-reduce


def test_sent_copies_rise_with_the_split_experts_copies(cost):
    loads = [900.0] + [160.0] * 7
    p = Placement.of([[0, 1, 2, 3]] + [[e // 2] for e in range(1, 8)], 4, 3, split=[0])
    assert cost.sent_max(p, loads) == pytest.approx(cost.sent_copies + 3 * 900 / 4)


def test_migrate_bytes_of_split_and_unsplit(cost):
    whole = Placement.of([[0], [0], [1], [1], [2], [2], [3], [3]], 4, 3)
    split = Placement.of(SPLIT, 4, 3, split=[0])
    assert whole.transfers(split) == [(0, 0, 2, 0.5)] and whole.moves(split) == [(0, 0, 2)]
    assert split.transfers(whole) == [(0, 2, 0, 0.5)]
    moved_whole = Placement.of([[2], [0], [1], [1], [2], [2], [3], [3]], 4, 3)
    half, full = cost.migrate_us(whole, split), cost.migrate_us(whole, moved_whole)
    assert 0 < half < full and cost.migrate_us(split, whole) == pytest.approx(half)
    # replicas to shards on the same ranks: every shard's slice is already held
    assert cost.migrate_us(Placement.of(SPLIT, 4, 3), split) == 0.0
    # two shards to four: ranks 1 and 3 each get a quarter from the one shard that covers it
    four = Placement.of([[0, 1, 2, 3]] + SPLIT[1:], 4, 3, split=[0])
    assert sorted(split.transfers(four)) == [(0, 0, 1, 0.25), (0, 2, 3, 0.25)]


def test_with_unsplits_an_expert_left_on_one_rank():
    p = Placement.of(SPLIT, 4, 3, split=[0])
    q = _with(p, 0, drop=2)
    assert q is not None and q.replicas[0] == (0,) and not q.split[0]
    q.check()


def test_hot_replicas_never_add_to_a_split_expert():
    p = Placement.of(SPLIT, 4, 3, split=[0])
    q = hot_replicas(p, [2000.0] + [10.0] * 7)
    assert q.replicas[0] == p.replicas[0] and q.split == p.split


def test_search_splits_a_dominant_expert(cost):
    base = Placement.static(8, 4, 3)
    loads = [900.0] + [160.0] * 6 + [148.0]
    q = search(base, loads, cost, 25, observed=[loads, loads])
    q.check()
    assert q.split[0] and len(q.replicas[0]) >= 2 and not any(q.split[1:])
    assert cost.layer(q, loads).total_us < cost.layer(base, loads).total_us


def test_search_does_not_split_when_no_expert_is_hot(cost):
    base = Placement.static(8, 4, 3)
    for loads in ([256.0] * 8, [300.0, 290.0, 250.0, 240.0, 260.0, 250.0, 230.0, 228.0]):
        q = search(base, loads, cost, 25, observed=[loads])
        assert not any(q.split)


def test_executor_accepts_split_placements():
    pytest.importorskip("torch")
    from executor.placement import check_placements
    m = MoEModel.from_name("Mixtral-7B-FSMoE")
    check_placements([Placement.of(SPLIT, 4, 3, split=[0])] * m.layers, m, 4)  # run by executor.placement
    with pytest.raises(MoeschedError, match="layers given"):
        check_placements([Placement.of(SPLIT, 4, 3, split=[0])], m, 4)
