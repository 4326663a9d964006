"""The two host issue modes of the executor, in one process (a gloo world of 1).

Threads mode launches collectives from an issue thread: gradients must equal the
single-thread mode's exactly, a failing task on either thread must surface as the step's
error (not a hang), and the host timeline must show who launched what, in plan order.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.distributed as dist
from localhost import free_port

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.graph import COMPUTE
from moesched.knobs import Knobs

from executor import comm_tasks, tasks
from executor.layers import MoEModule, make_batch
from executor.runtime import PlannedStep
from executor.testplans import make_plan, tiny_model


@pytest.fixture(scope="module")
def world1():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _plan(**kw):
    return make_plan(tiny_model(shared_experts=1, capacity_factor=1.0, **kw), Cluster(1, 1),
                     Knobs((2, 4), (4, 2), at_chunked=True, grad_chunk_bytes=700), random.Random(5))


def _grads(plan, issue: str) -> tuple[float, list[torch.Tensor], PlannedStep]:
    m = plan.model
    module = MoEModule(m, ep=1, ep_rank=0, seed=0)
    step = PlannedStep(module, plan, issue=issue)
    x, t = make_batch(m, 0, 0)
    loss = step(x, t)
    return loss, [p.grad.clone() for blk in module.blocks for p in blk.dense_params() + blk.expert_params()], step


def test_threads_equal_single(world1) -> None:
    plan = _plan()
    l1, g1, _ = _grads(plan, "single")
    l2, g2, _ = _grads(plan, "threads")
    assert l1 == l2
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    assert any(float(g.abs().max()) > 0 for g in g2)


def test_host_timeline_threads(world1) -> None:
    plan = _plan()
    _, _, step = _grads(plan, "threads")
    h = step.timeline().host
    assert sorted(h["task"]) == sorted(plan.order)
    node = plan.validate().nodes
    for thread, want in (("compute", True), ("comm", False)):
        part = h[h["thread"] == thread].sort_values("start_us")
        assert all((node[t]["resource"] == COMPUTE) == want for t in part["task"])
        # each thread launches its tasks in plan order, one at a time
        pos = [plan.order.index(t) for t in part["task"]]
        assert pos == sorted(pos)
        assert (part["start_us"].values[1:] >= part["end_us"].values[:-1]).all()
    single = _grads(plan, "single")[2].timeline().host
    assert set(single["thread"]) == {"main"}


def test_timeline_times_the_call_around_the_tasks(world1) -> None:
    """The call's setup, its tasks and the loss average add up to the whole call, and the
    tasks' host intervals fall inside it."""
    plan = _plan()
    _, _, step = _grads(plan, "single")
    tl = step.timeline()
    m = tl.meta
    assert m["setup_us"] > 0 and m["finish_us"] > 0 and m["loss_avg_us"] > 0
    assert m["setup_us"] + m["finish_us"] + m["loss_avg_us"] == pytest.approx(m["call_us"], rel=1e-6)
    assert tl.host["end_us"].max() <= m["finish_us"] and tl.df["end_us"].max() <= m["finish_us"] + 1.0
    copies = plan.model.tokens * plan.model.top_k  # kept copies, from the count exchange, + dropped ones
    assert step.last_dropped + sum(r[0][0] for r in step.routing()) == copies * plan.model.layers


@pytest.mark.parametrize("kind", ["dispatch", "expert_fwd"])
def test_failure_on_either_thread_is_raised(world1, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    def boom(*a, **k):
        raise RuntimeError(f"{kind} failed")
    table = comm_tasks.A2A if kind == "dispatch" else tasks.COMPUTE
    monkeypatch.setitem(table, kind, boom)
    with pytest.raises(RuntimeError, match=f"{kind} failed"):
        _grads(_plan(), "threads")


def test_unknown_issue_mode(world1) -> None:
    with pytest.raises(MoeschedError, match="issue must be one of"):
        PlannedStep(MoEModule(tiny_model(), ep=1, ep_rank=0), _plan(), issue="fibers")


def test_graph_pieces_cover_every_attention_call(world1) -> None:
    """executor.graphs.pieces lists exactly the attention pieces a step runs, and running
    them through the graphed path (GraphedPiece's two functions, eagerly on CPU: forward
    into the layer state, backward from it into p.grad and the previous layer's dy) gives
    the eager path's loss and gradients exactly."""
    from executor import graphs
    plan = _plan()
    m = plan.model
    ref_loss, ref_grads, _ = _grads(plan, "single")
    module = MoEModule(m, ep=1, ep_rank=0, seed=0)
    step = PlannedStep(module, plan)
    seen = []

    class Counted(graphs.GraphedPiece):
        def forward(self, x):
            seen.append((self.ls, self.a, self.b))
            super().forward(x)
    step.graphs = {(l, a, b): Counted(module.blocks[l], m, step.layers[l], step.layers[l - 1] if l else None, a, b,
                                      graph=False) for l, a, b in graphs.pieces(m, plan.knobs)}
    loss = step(*make_batch(m, 0, 0))
    assert len(seen) == len(set(seen)) == len(step.graphs) > m.layers
    assert loss == ref_loss
    got = [p.grad for blk in module.blocks for p in blk.dense_params() + blk.expert_params()]
    assert all(torch.equal(a, b) for a, b in zip(got, ref_grads))


def test_plans_of_one_process_share_their_groups(world1) -> None:
    """Every plan of a process runs on the same communicators (validation runs dozens of
    plans: a fresh set each leaked them), and a plan of another degree reuses them too."""
    m = tiny_model(shared_experts=1, capacity_factor=1.0)
    a = PlannedStep(MoEModule(m, ep=1, ep_rank=0, seed=0), _plan())
    other = make_plan(m, Cluster(1, 1), Knobs.uniform(m.layers, 1), random.Random(1))
    b = PlannedStep(MoEModule(m, ep=1, ep_rank=0, seed=0), other)
    assert a.groups.ep is b.groups.ep and a.groups.dense is b.groups.dense and a.groups.meta is b.groups.meta
    assert a.groups.meta is not a.groups.ep  # the count exchange keeps its own group
    x, t = make_batch(m, 0, 0)
    assert b(x, t) == PlannedStep(MoEModule(m, ep=1, ep_rank=0, seed=0), other)(x, t)


def test_groups_are_not_reused_across_worlds(world1) -> None:
    """After the default group is destroyed and made again, plans get new groups (the new
    world is left for the fixture to destroy)."""
    from executor.comm import build_groups
    first = build_groups(Cluster(1, 1), Knobs.uniform(2, 1), "gloo").ep
    assert build_groups(Cluster(1, 1), Knobs.uniform(2, 1), "gloo").ep is first
    dist.destroy_process_group()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    again = build_groups(Cluster(1, 1), Knobs.uniform(2, 1), "gloo").ep
    assert again is not first
    dist.all_reduce(torch.ones(1), group=again)  # a live group


def test_a_plan_for_another_world_says_how_to_start_it(world1) -> None:
    """PlannedStep in a user's job: a plan for 2 ranks in a group of 1 is refused in one line
    naming the torchrun flags of the plan's cluster."""
    plan = make_plan(tiny_model(), Cluster(1, 2), Knobs((1, 1), (1, 1)))
    with pytest.raises(MoeschedError) as e:
        PlannedStep(MoEModule(plan.model, ep=2, ep_rank=0, seed=0), plan)
    assert str(e.value) == ("the plan is for 2 ranks (1x2) but the group has 1; start the job with torchrun "
                            "--nproc_per_node=2")
