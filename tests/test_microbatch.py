"""Overlap across micro-batches in simulation (moesched.microbatch, moesched.microbatch_search):
the stacked graph, the published orders (combined 1F1B, DualPipe) and moesched's search, and
the properties every simulated plan must have."""
from __future__ import annotations

from dataclasses import replace

import networkx as nx
import pytest

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.microbatch import (DUALPIPE_PAIR, MEGATRON_PAIR, combined_1f1b_order, dualpipe_order, split_model,
                                 stack_graph)
from moesched.microbatch_search import compare, graphs, published_knobs, run_order
from moesched.models import PRESETS
from moesched.profile import Profile
from moesched.sim import Timeline

EPS_US = 1e-6


@pytest.fixture(scope="module")
def setup() -> tuple:
    p = Profile.load("h200x4-2nodes")
    return replace(PRESETS["GPT2-Tiny-MoE"], layers=3), Cluster(p.nodes, p.gpus_per_node), p


def _check_timeline(g: nx.DiGraph, tl: Timeline, order: list[str]) -> None:
    """Every dependency respected, no stream runs two tasks at once, and each stream runs
    its tasks in ``order``."""
    df = tl.df[tl.df["rank"] == 0].set_index("task")
    start, end = df["start_us"].to_dict(), df["end_us"].to_dict()
    for a, b in g.edges():
        assert start[b] >= end[a] - EPS_US, (a, b)
    pos = {t: i for i, t in enumerate(order)}
    for res, d in df.groupby("resource"):
        d = d.sort_values("start_us", kind="stable")
        assert (d["start_us"].to_numpy()[1:] >= d["end_us"].to_numpy()[:-1] - EPS_US).all(), res
        assert [pos[t] for t in d.index] == sorted(pos[t] for t in d.index), res


def _serialized_us(g: nx.DiGraph, order: list[str]) -> float:
    """Step time of ``order`` with no overlap at all: each task after the one before it."""
    h = g.copy()
    h.add_edges_from(zip(order, order[1:]))
    return run_order(h, order).makespan_us


def test_split_model_demands_a_divisor() -> None:
    m = PRESETS["LLaMA2-MoE"]
    assert split_model(m, 2).micro_batch == 2 and split_model(m, 4).micro_batch == 1
    for bad in (3, 0, 8):
        with pytest.raises(MoeschedError, match="micro-batches do not divide the batch of 4 samples"):
            split_model(m, bad)


def test_stack_graph_copies_micro_batches_and_shares_gradient_chunks(setup: tuple) -> None:
    model, cluster, p = setup
    g1, g = graphs(split_model(model, 4), cluster, p, published_knobs(split_model(model, 4)), 4)
    grads = [t for t, a in g1.nodes(data=True) if a["kind"] == "grad_ar"]
    assert grads and g.number_of_nodes() == 4 * (g1.number_of_nodes() - len(grads)) + len(grads)
    assert nx.is_directed_acyclic_graph(g)
    for t in grads:  # a chunk of accumulated gradients waits for every micro-batch
        assert {g.nodes[q]["microbatch"] for q in g.predecessors(t) if "microbatch" in g.nodes[q]} == {0, 1, 2, 3}
    # at most two micro-batches in flight: micro-batch 2 starts after micro-batch 0's backward
    assert nx.has_path(g, "u0.L0.B.attn_bwd.c0", "u2.L0.F.attn_fwd.c0")
    assert not nx.has_path(g, "u0.L0.B.attn_bwd.c0", "u1.L0.F.attn_fwd.c0")
    assert stack_graph(g1, 4, inflight=None).number_of_edges() < g.number_of_edges()


def test_published_orders_coincide_per_stream() -> None:
    """DualPipe's issue order (DeepSeek's profile) and combined 1F1B's differ only in which
    of two concurrent nodes is issued first: per stream they are the same."""
    comm = {"combine", "dispatch"}
    for on_comm in (True, False):
        pick = [x for x in MEGATRON_PAIR if (x[1] in comm) == on_comm]
        assert pick == [x for x in DUALPIPE_PAIR if (x[1] in comm) == on_comm]


@pytest.mark.parametrize("m", [2, 4])
def test_every_plan_is_valid_and_overlap_never_slower(setup: tuple, m: int) -> None:
    model, cluster, p = setup
    plans = compare(model, cluster, p, m)
    assert set(plans) == {"single", "combined-1f1b", "dualpipe", "moesched"}
    model1 = split_model(model, m)
    for key, plan in plans.items():
        g1, g = graphs(model1, cluster, p, plan.knobs, m)
        tl = run_order(g, plan.order)
        assert tl.makespan_us == pytest.approx(plan.step_us)
        _check_timeline(g, tl, plan.order)
        assert plan.step_us <= _serialized_us(g, plan.order) + EPS_US, key
    best = min(v.step_us for k, v in plans.items() if k != "moesched")
    assert plans["moesched"].step_us <= best + EPS_US
    assert plans["combined-1f1b"].step_us == pytest.approx(plans["dualpipe"].step_us)
    # the cross-micro-batch plans overlap one micro-batch's all-to-all with another's compute
    assert plans["combined-1f1b"].step_us < plans["single"].step_us


def test_pair_order_interleaves_forward_and_backward(setup: tuple) -> None:
    model, cluster, p = setup
    model1 = split_model(model, 2)
    g1, g = graphs(model1, cluster, p, published_knobs(model1), 2)
    for fn in (combined_1f1b_order, dualpipe_order):
        order = fn(g1, g)
        assert sorted(order) == sorted(g.nodes)
        pos = {t: i for i, t in enumerate(order)}
        # forward of micro-batch 1 layer 0 is issued beside backward of micro-batch 0's last layer
        assert abs(pos["u1.L0.F.dispatch.c0"] - pos["u0.L2.B.expert_dx.c0"]) == 1
        assert pos["u0.L2.B.combine_bwd.c0"] < pos["u1.L1.F.attn_fwd.c0"] < pos["u0.L0.B.attn_bwd.c0"]


def test_run_order_needs_every_task_once(setup: tuple) -> None:
    model, cluster, p = setup
    model1 = split_model(model, 2)
    g1, g = graphs(model1, cluster, p, published_knobs(model1), 2)
    order = combined_1f1b_order(g1, g)
    with pytest.raises(MoeschedError, match="every task"):
        run_order(g, order[:-1])
    with pytest.raises(MoeschedError, match="cross-micro-batch style"):
        from moesched.microbatch import paired_order
        paired_order(g1, g, "zb-h1")


def test_cpsat_refinement_never_slower_and_bounds_the_plan(setup: tuple) -> None:
    pytest.importorskip("ortools")
    model, cluster, p = setup
    plans = compare(model, cluster, p, 2)
    refined = compare(model, cluster, p, 2, cpsat_s=5.0)["moesched"]
    assert refined.step_us <= plans["moesched"].step_us + EPS_US and refined.gap is not None
    gap = refined.gap
    assert gap.bound_us <= gap.best_us + 1e-6 <= gap.plan_us + 1e-6 and gap.gap >= -1e-9
    g1, g = graphs(split_model(model, 2), cluster, p, refined.knobs, 2)
    _check_timeline(g, run_order(g, refined.order), refined.order)
