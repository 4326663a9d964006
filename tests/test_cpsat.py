"""CP-SAT optimal orders: bounds, heuristic dominance, brute force (interference 1.0)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ortools")

from moesched.cluster import Cluster  # noqa: E402
from moesched.graph import build  # noqa: E402
from moesched.knobs import Knobs  # noqa: E402
from moesched.models import MoEModel  # noqa: E402
from moesched.profile import Profile  # noqa: E402
from moesched.solve import cpsat  # noqa: E402
from moesched.solve.rules import Rule  # noqa: E402

PROFILE = Path(__file__).resolve().parent.parent / "profiles" / "analytic-h200x4-nvlink.json"


def _graph(layers: int, r: int, grad_chunk_bytes: int | None = 2**20, at: bool = False):
    model = MoEModel(name="t", layers=layers, d_model=1024, heads=8, seq_len=512, micro_batch=4, ffn_hidden=2048,
                     experts=4, top_k=2, capacity_factor=1.2)
    return build(model, Cluster(1, 4), Profile.load(PROFILE),
                 Knobs.uniform(layers, r, at_chunked=at, grad_chunk_bytes=grad_chunk_bytes))


@pytest.mark.parametrize("layers,r,at", [(1, 2, False), (1, 4, True), (2, 2, False), (2, 4, False)])
def test_bounds_and_heuristic(layers, r, at) -> None:
    g = _graph(layers, r, at=at)
    for prio in (None, Rule("first", "first", "layer", None)(g)):
        res = cpsat.solve_order(g, prio, time_limit_s=20, num_workers=2)
        assert res.status in ("optimal", "feasible")
        assert res.lower_bound_us <= res.makespan_us + 1e-9
        assert res.makespan_us <= res.heuristic_us + 1e-9
        h_ticks, _ = cpsat.heuristic_ticks(g, prio)
        assert res.heuristic_us == pytest.approx(h_ticks * cpsat.TICK_US)
        # the order replays (strictly, each task as early as possible) to the CP-SAT makespan
        assert cpsat.replay_ticks(g, res.order) * cpsat.TICK_US <= res.makespan_us + 1e-9
        assert sorted(res.order) == sorted(g.nodes)


def test_tiny_instance_equals_brute_force() -> None:
    g = _graph(1, 1, grad_chunk_bytes=2**21)
    res = cpsat.solve_order(g, time_limit_s=20)
    assert res.status == "optimal"
    assert res.makespan_us == pytest.approx(cpsat.brute_force_us(g))
