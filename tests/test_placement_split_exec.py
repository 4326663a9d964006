"""Split experts (hidden-dimension shards) in the executor: the move plan's pieces tile every
new slice; ``executor.run --placements`` follows a schedule with a split expert. (Training
across changes that split, unsplit and reshard experts, against the never-moved reference
slice by slice: ``tests/test_placement_executor.py``, ``executor.placecheck --split``.)"""
from __future__ import annotations

import re

import pytest

from moesched.placement import Placement
from moesched.placement_schedule import PlacementSchedule

pytest.importorskip("torch")

from executor.placecheck import split_schedule  # noqa: E402
from executor.shardmove import move_plan  # noqa: E402
from executor.testplans import make_plan, tiny_model  # noqa: E402


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("hidden", [30, 32, 7])
def test_the_pieces_tile_every_new_slice_from_old_holders(world, hidden):
    plcs = split_schedule(2 * world, world)
    for old, new in zip(plcs, plcs[1:] + plcs[:1]):
        for e, d, pieces in move_plan(old, new, hidden):
            lo, hi = new.shard_range(e, d, hidden)
            assert pieces[0][1] == lo and pieces[-1][2] == hi, (e, d, pieces)
            assert all(a[2] == b[1] for a, b in zip(pieces, pieces[1:])), pieces
            for s, a, b in pieces:
                slo, shi = old.shard_range(e, s, hidden)
                assert slo <= a < b <= shi, (e, s, a, b)


def test_an_unsplit_move_is_one_piece_from_the_lowest_holder():
    old = Placement.of([[0, 1], [1]], 2, 2)
    new = Placement.of([[0, 1], [0]], 2, 2)
    assert move_plan(old, new, 32) == [(1, 0, [(1, 0, 32)])]
    assert move_plan(old, old, 32) == []


@pytest.mark.slow
def test_executor_run_follows_a_schedule_with_a_split_expert(tmp_path):
    from moesched.cluster import Cluster
    from moesched.knobs import Knobs

    from tests.test_run_placements import launch, static
    m = tiny_model()
    plan, sched = str(tmp_path / "plan.json"), str(tmp_path / "s.json")
    make_plan(m, Cluster(1, 2), Knobs.uniform(m.layers, 1)).save(plan)
    a = Placement.of([[0, 1], [0], [1], [1]], 2, 3, split=[0])
    b = Placement.of([[1], [0], [0, 1], [1]], 2, 3, split=[2])
    PlacementSchedule("split", ((0, (static(), static())), (1, (a, a)), (2, (b, static())))).save(sched)
    res = launch(["--plan", plan, "--placements", sched, "--steps", "2", "--warmup", "1"])
    assert [code for code, _, _ in res] == [0, 0], res
    assert re.search(r"executor: 2 of 2 placement changes applied, \d+ experts moved", res[0][1]), res[0][1]
