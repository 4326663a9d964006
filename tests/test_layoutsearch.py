"""PPMoE in the solver's search (moesched.layoutsearch): index slice/assign copies priced;
the layout's schedule is the fastest of a small priority search, a valid schedule
(dependencies respected, no resource double-booked), and its plan records the choice."""
from __future__ import annotations

import pytest

from moesched.cluster import Cluster
from moesched.layoutchoice import ppmoe_option
from moesched.layoutgraph import build
from moesched.layouts import Layout
from moesched.layoutsearch import _priorities, hbm_bytes_per_us, index_copy_bytes, search_priority
from moesched.models import PRESETS
from moesched.network import load_network
from moesched.profile import Profile
from moesched.sim import simulate

NVLINK = Profile.load("h200x4-nvlink")
M = PRESETS["LLaMA2-MoE"]


def test_index_copies_are_priced_and_absent_for_ep() -> None:
    lay = Layout(2)
    assert index_copy_bytes(M, Layout(1)) == 0
    assert index_copy_bytes(M, lay) == 4 * M.tokens * M.top_k * M.d_model * M.bytes_per_elem
    g = build(M, Cluster(1, 4), NVLINK, lay)
    us = index_copy_bytes(M, lay) / hbm_bytes_per_us(NVLINK.hardware)
    for task in ("L3.F.expert_fwd.c0", "L3.B.expert_dx.c0"):
        assert g.nodes[task]["copy_us"] == pytest.approx(us) and us > 0
    assert g.nodes["L3.B.expert_dw.c0"]["copy_us"] == 0.0


@pytest.mark.parametrize("cluster,layout", [(Cluster(1, 4), Layout(2)), (Cluster(1, 4), Layout(2, True)),
                                            (Cluster(2, 4, network=load_network("h200x4-box")), Layout(4))])
def test_search_is_the_fastest_valid_schedule(cluster: Cluster, layout: Layout) -> None:
    g = build(M, cluster, NVLINK, layout)
    tl, name = search_priority(g)
    spans = {n: simulate(g, {t: f(t) for t in g.nodes}).makespan_us for n, f in _priorities(g).items()}
    assert tl.makespan_us == min(spans.values()) == spans[name] <= spans["seq"]
    assert name == next(n for n, s in spans.items() if s == tl.makespan_us)  # ties: the first
    df = tl.df[tl.df["rank"] == 0].set_index("task")
    for a, b in g.edges:
        assert df.at[b, "start_us"] >= df.at[a, "end_us"] - 1e-6, (a, b)
    for _, rows in df.sort_values("start_us").groupby("resource"):
        assert (rows["start_us"].to_numpy()[1:] >= rows["end_us"].to_numpy()[:-1] - 1e-6).all()


def test_ppmoe_plan_records_the_searched_priority() -> None:
    opt = ppmoe_option(M, Cluster(1, 4), NVLINK, Layout(2), 1)
    assert opt.plan is not None and opt.plan.layout == Layout(2)
    assert opt.plan.predicted["priority"] in _priorities(build(M, Cluster(1, 4), None, Layout(2)))
    assert opt.plan.predicted["source"] == "search:layout"
    assert opt.plan.replay(NVLINK).makespan_us == pytest.approx(opt.step_us, rel=1e-9)
