"""The measured cost of moving an expert's state (executor.placemove) goes into a profile and
prices migrations (moesched.placement_cost)."""
from __future__ import annotations

import pytest

from moesched.cluster import Cluster
from moesched.dense import moe_part
from moesched.errors import MoeschedError
from moesched.models import MoEModel
from moesched.placement import Placement
from moesched.placement_cost import MOVE_KEY, PlacementCost
from moesched.profile import Profile

from executor.placemove import main

MODEL = moe_part(MoEModel.from_name("DeepSeek-V2-Lite", layers=3))  # its 2 MoE layers


def test_measured_move_is_in_the_profile_and_prices_a_migration(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["--profile", "cpu-gloo-2", "--out", str(out), "--device", "cpu", "--repeats", "3"]) == 0
    p = Profile.load(out)
    assert set(p.meta[MOVE_KEY]) >= {"alpha_us", "beta_us_per_unit", "points"}
    assert "pinned host" in p.meta[f"{MOVE_KEY}_how"]
    cost = PlacementCost(MODEL, Cluster(1, 2), p)
    plain = PlacementCost(MODEL, Cluster(1, 2), Profile.load("cpu-gloo-2"))
    old = Placement.static(64, 2, 33)
    new = Placement.of([list(rs) + ([1] if e == 0 else []) for e, rs in enumerate(old.replicas)], 2, 33)
    b = cost.expert_state_bytes
    alpha = max(0.0, cost.measured_move.alpha_us)
    assert cost.migrate_us(old, new) == pytest.approx(plain.link_us(b, False) + alpha)
    assert plain.migrate_us(old, new) == pytest.approx(plain.link_us(b, False))
    # two experts to one rank: their bytes cross the link together, each copy pays the alpha
    two = Placement.of([list(rs) + ([1] if e in (0, 1) else []) for e, rs in enumerate(old.replicas)], 2, 34)
    assert cost.migrate_us(old, two) == pytest.approx(plain.link_us(2 * b, False) + 2 * alpha)


def test_bad_output_and_bad_move_cost(tmp_path, capsys):
    assert main(["--profile", "cpu-gloo-2", "--out", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moesched: error:")
    p = Profile.load("cpu-gloo-2")
    bad = Profile.from_dict({**p.to_dict(), "meta": {**p.meta, MOVE_KEY: {"alpha_us": 1.0}}})
    with pytest.raises(MoeschedError, match="expert_move"):
        PlacementCost(MODEL, Cluster(1, 2), bad)
