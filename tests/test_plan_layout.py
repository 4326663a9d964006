"""Plans that carry a PPMoE layout (issue 23 part 3): ``moesched layouts --out`` writes the
chosen layout's plan; the layout record round-trips, is validated on load (bad layout: one
line, exit 2) and leaves EP plans (no layout) and their hashes unchanged."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesched.cli import main
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.knobs import Knobs
from moesched.layoutgraph import build as build_layout
from moesched.layouts import Layout
from moesched.models import PRESETS
from moesched.network import load_network
from moesched.plan import Plan, from_timeline
from moesched.profile import Profile
from moesched.sim import simulate

PROFILE = "h200x4-nvlink"


def _ppmoe_plan(layout: Layout) -> Plan:
    m, p = PRESETS["LLaMA2-MoE"], Profile.load(PROFILE)
    c = Cluster(2, 4, network=load_network("h200x4-box"))
    tl = simulate(build_layout(m, c, p, layout))
    return from_timeline("ppmoe", m, c, Knobs.uniform(m.layers, 1), tl, p, layout=layout)


def test_layout_plan_round_trips_and_replays(tmp_path: Path) -> None:
    """A TP4+SP plan saves, loads with its layout, validates against the PPMoE graph (not
    the EP graph), and its replay reproduces the predicted step exactly."""
    plan = _ppmoe_plan(Layout(4, True))
    path = tmp_path / "p.json"
    plan.save(path)
    back = Plan.load(path)
    assert back.layout == Layout(4, True) and back.hash == plan.hash
    g = back.validate()
    assert set(g.nodes) == set(back.order) and not any(k == "a2a" for _, k in g.nodes(data="kind"))
    step_us = back.replay(Profile.load(PROFILE)).makespan_us
    assert round(step_us, 3) == plan.predicted["step_us"]


def test_ep_plan_has_no_layout_key_and_same_hash() -> None:
    """A plan without a layout serializes exactly as before (no ``layout`` key), so the
    hashes of existing plans are unchanged; a layout changes the hash."""
    plan = _ppmoe_plan(Layout(2))
    ep = Plan(plan.policy, plan.model, plan.cluster, plan.knobs, plan.order, plan.profile, plan.predicted)
    assert "layout" not in ep.to_dict() and set(ep.to_dict()) == {
        "format", "version", "policy", "model", "cluster", "knobs", "profile", "order", "predicted", "hash"}
    assert ep.hash != plan.hash


def test_layouts_out_writes_the_chosen_plan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Mixtral-8x7B on 8x8: only TP8+SP runs; --out writes its plan, which loads back."""
    out = tmp_path / "plan.json"
    assert main(["layouts", "--model", "Mixtral-8x7B", "--cluster", "8x8", "--network", "dgx-h200",
                 "--time-limit", "1", "--out", str(out)]) == 0
    assert f"plan of PPMoE TP8+SP written to {out}" in capsys.readouterr().out
    plan = Plan.load(out)
    assert plan.layout == Layout(8, True) and plan.policy == "ppmoe"


def test_layouts_out_checked_before_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "missing-dir" / "plan.json"
    assert main(["layouts", "--model", "LLaMA2-MoE", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moesched: error:")
    assert not bad.exists()


@pytest.mark.parametrize("layout,what", [
    ({"tp": 3, "sequence_parallel": False, "grouped_experts": True}, "does not divide"),
    ({"tp": 1, "sequence_parallel": False, "grouped_experts": True}, "layout.tp must be an integer >= 2"),
    ({"tp": True, "sequence_parallel": False, "grouped_experts": True}, "layout.tp must be"),
    ({"tp": 2, "sequence_parallel": "yes", "grouped_experts": True}, "layout.sequence_parallel must be"),
    ({"tp": 2, "sequence_parallel": False}, "layout must be an object with keys"),
    ([2], "layout must be an object"),
])
def test_bad_layout_is_refused(layout: object, what: str, tmp_path: Path) -> None:
    d = _ppmoe_plan(Layout(2)).to_dict()
    d["layout"] = layout
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(MoeschedError) as e:
        Plan.load(path)
    assert what in str(e.value) and "\n" not in str(e.value)


def test_tampered_layout_fails_the_hash(tmp_path: Path) -> None:
    d = _ppmoe_plan(Layout(2)).to_dict()
    d["layout"]["sequence_parallel"] = True
    path = tmp_path / "t.json"
    path.write_text(json.dumps(d))
    with pytest.raises(MoeschedError, match="hash mismatch"):
        Plan.load(path)
