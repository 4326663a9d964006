"""One training step of a layout plan (a :class:`moesched.plan.Plan` with a PPMoE
``layout``: :mod:`moesched.layouts`, :mod:`moesched.layoutgraph`) on torch.distributed,
issued in the plan's order, with its exactness against the single-process reference.

Ranks: TP groups of t consecutive ranks (one data-parallel replica each: rank r is TP
rank r % t of replica r // t) and DP groups of the world/t ranks with the same TP rank.
Replica d runs the micro-batch :func:`executor.layers.make_batch` of rank d (B samples);
the reference loss is the mean over replicas of :meth:`ReferenceModel.rank_loss`.

Issue order, at layer granularity: walking ``plan.order``, the first forward task of layer
l runs its block (:func:`executor.tp.block_forward`: TP attention and its all-reduce or
RS/AG, the replicated gate, index slices, local experts, index assignment, the MoE
all-reduce), ``loss`` the loss, the first backward task of layer l that block's backward
(autograd from the layer's output gradient to its input: the TP collectives of the
backward inside it), ``G.dense.L{l}`` / ``G.expert.L{l}`` that layer's gradient
all-reduces over the DP group (dense first summing the partially computed replicated
gradients over the TP group, :func:`executor.tp.sync_replicated_grads`). Tasks inside a
layer run in autograd's order, not one by one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from moesched.errors import MoeschedError
from moesched.plan import Plan

from executor.layers import ReferenceModel, make_batch
from executor.tp import TPShard, block_forward, grads_of, sync_replicated_grads

RTOL, ATOL = 1e-4, 1e-5
EXPERT_PARAMS = ("w1", "w2", "w3")


@dataclass
class LayoutStepResult:
    """Rank 0's record: loss of the step (mean over replicas), the reference's, the largest
    |gradient - reference| over every rank's shard, where it is, and whether all match."""

    tp: int
    dp: int
    sp: bool
    loss: float
    ref_loss: float
    max_abs_err: float
    worst: str
    ok: bool


def _groups(world: int, t: int) -> tuple[dist.ProcessGroup, dist.ProcessGroup]:
    """(this rank's TP group, its DP group); every rank creates every group, in one order."""
    rank, mine_tp, mine_dp = dist.get_rank(), None, None
    for d in range(world // t):
        g = dist.new_group(list(range(d * t, (d + 1) * t)))
        mine_tp = g if rank // t == d else mine_tp
    for r in range(t):
        g = dist.new_group(list(range(r, world, t)))
        mine_dp = g if rank % t == r else mine_dp
    assert mine_tp is not None and mine_dp is not None
    return mine_tp, mine_dp


def _layer_of(task: str) -> int:
    """Layer index of a task name ``L{l}.{F|B}...`` or ``G.{group}.L{l}``."""
    part = task.split(".")[0] if task.startswith("L") else task.split(".")[2]
    return int(part[1:])


def run_layout_step(plan: Plan, seed: int = 0) -> LayoutStepResult:
    """Run one step of ``plan`` (which has a layout) on the initialised default group (CPU,
    fp32) and compare with the reference. Raises MoeschedError when the world is not the
    plan's."""
    if plan.layout is None:
        raise MoeschedError("run_layout_step needs a plan with a layout")
    m, t, sp = plan.model, plan.layout.tp, plan.layout.sequence_parallel
    if m.dense_layers:
        raise MoeschedError(f"the executor runs PPMoE layouts of all-MoE models only; {m.name} has dense "
                            f"layers {list(m.dense_layers)} (the planner prices them as TP MLPs)")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world != plan.cluster.world:
        raise MoeschedError(f"the plan is for {plan.cluster.world} ranks but {world} are running")
    tp_g, dp_g = _groups(world, t)
    dp, d, r = world // t, rank // t, rank % t
    ref = ReferenceModel(m, seed=seed)
    shards = [TPShard(blk, m, r, t) for blk in ref.module.blocks]
    x, target = make_batch(m, d, seed=seed)
    B, L, M = x.shape
    h, tgt = x.reshape(B * L, M), target.reshape(B * L, M)
    if sp:
        h, tgt = h.chunk(t, 0)[r], tgt.chunk(t, 0)[r]
    ins: dict[int, torch.Tensor] = {}
    outs: dict[int, torch.Tensor] = {}
    done: set[tuple[str, int]] = set()
    grad = torch.empty(0)
    loss = torch.zeros(())
    for task in plan.order:
        if task == "loss":
            loss = ((h - tgt) ** 2).sum() / (B * L * M * dp)  # replicas' mean: DP all-reduce sums
            grad = torch.autograd.grad(loss, outs[m.layers - 1])[0]
            continue
        layer = _layer_of(task)
        if task.startswith("G."):
            _sync_grads(shards[layer], task.split(".")[1], tp_g, dp_g, sp)
        elif ".F." in task and ("F", layer) not in done:
            done.add(("F", layer))
            ins[layer] = h.detach().requires_grad_(True)
            outs[layer], _ = block_forward(ins[layer], shards[layer], m, B, L, tp_g, sp)
            h = outs[layer]
        elif ".B." in task and ("B", layer) not in done:
            done.add(("B", layer))
            outs[layer].backward(grad)
            grad = ins[layer].grad  # type: ignore[assignment]
    if dp == 1:  # no gradient all-reduce tasks: only the TP group's partial gradients to sum
        for p in shards:
            sync_replicated_grads(p, tp_g, sp)
    return _compare(plan, ref, shards, loss.detach(), seed)


def _sync_grads(p: TPShard, group: str, tp_g: dist.ProcessGroup, dp_g: dist.ProcessGroup, sp: bool) -> None:
    """One layer's gradient all-reduce over the DP group: "dense" (after summing the
    replicated parameters' partial gradients over the TP group) or "expert"."""
    for q in p.parameters():  # an expert no token reached here may have some on another replica
        if q.grad is None:
            q.grad = torch.zeros_like(q)
    if group == "dense":
        sync_replicated_grads(p, tp_g, sp)
    for n, q in p.named_parameters():
        if q.grad is not None and (n in EXPERT_PARAMS) == (group == "expert"):
            dist.all_reduce(q.grad, group=dp_g)


def _compare(plan: Plan, ref: ReferenceModel, shards: list[TPShard], loss: torch.Tensor,
             seed: int) -> LayoutStepResult:
    """Loss and every gradient of this rank's shards against the reference's (the mean over
    replicas of their losses, sliced like the shard); the worst error over all ranks."""
    m, t = plan.model, plan.layout.tp  # type: ignore[union-attr]
    world = dist.get_world_size()
    dp = world // t
    ref_loss = sum(ref.rank_loss(*make_batch(m, d, seed=seed)) for d in range(dp)) / dp
    ref_loss.backward()  # type: ignore[union-attr]
    total = loss.clone()
    dist.all_reduce(total)  # every rank's share: t copies per replica without SP, 1/t shards with it
    total = total if plan.layout.sequence_parallel else total / t  # type: ignore[union-attr]
    worst, name, ok = 0.0, "", True
    for layer, (p, blk) in enumerate(zip(shards, ref.module.blocks)):
        want = dict(TPShard(grads_of(blk), m, dist.get_rank() % t, t).named_parameters())
        for n, mine in p.named_parameters():
            theirs = want[n].detach()
            if mine.grad is None:  # dp == 1: an expert no token reached
                mine.grad = torch.zeros_like(mine)
            err = float((mine.grad - theirs).abs().max())
            ok &= bool(torch.allclose(mine.grad, theirs, rtol=RTOL, atol=ATOL))
            if err >= worst:
                worst, name = err, f"L{layer}.{n}"
    rl = float(ref_loss.detach())  # type: ignore[union-attr]
    ok &= abs(float(total) - rl) <= ATOL + RTOL * abs(rl)
    flag = torch.tensor([0.0 if ok else 1.0, worst])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return LayoutStepResult(t, dp, plan.layout.sequence_parallel, float(total), rl,  # type: ignore[union-attr]
                            flag[1].item(), name, flag[0].item() == 0.0)
