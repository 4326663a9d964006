"""Benchmark closures: one compute task kind on synthetic inputs, through the runtime's own
task functions (:mod:`executor.tasks`), for the profiler.

:func:`shape_bench` is what the profiler times: the closure on the model shape of
:func:`bench_shape`, with its work from :func:`task_flops`.

``make_bench(kind, model, tokens, device, dtype, ep=1)`` builds a one-chunk context of
``tokens`` tokens (whole samples; one layer, two for the attention kinds) and returns a
closure that runs the task once. Routed experts: ``routed_copies(model, tokens)`` copies are received,
spread evenly over the E/ep local experts and ep sources (what the graph's work assumes).
Attention kinds run as layer 1, so they include what the runtime does there for layer 0:
attn_fwd merges layer 0's combined rows into its input, attn_bwd builds layer 0's
combine_bwd send rows from the input gradient, and scatter-adds the input gradients that
its own combine_bwd rows came back with (random rows here). ``loss`` merges the last
layer, computes the loss and its gradient, and builds the combine_bwd send rows. Not included: the count
all-gather of attn_fwd (a benchmark has no process group; the profiler times it apart,
:func:`executor.profiling.measure.measure_count_exchange`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from moesched import work
from moesched.kinds import ALL_COMPUTE_KINDS as KINDS  # the kinds a closure can run
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.ops import bench_shape

from executor import graphs, route, tasks
from executor.layers import MoEModule
from executor.state import ExpertBwd


def _ctx(model: MoEModel, tokens: int, device: torch.device, dtype: torch.dtype, ep: int,
         layers: int = 1) -> tasks.Ctx:
    model = replace(model, dense_layers=(), dense_ffn_hidden=None)  # MoE layers: what the tasks bench
    if tokens % model.seq_len == 0:
        m = replace(model, layers=layers, micro_batch=tokens // model.seq_len)
    else:
        m = replace(model, layers=layers, micro_batch=1, seq_len=tokens)
    module = MoEModule(m, ep=ep, ep_rank=0, seed=0, device=device, dtype=dtype)
    knobs = Knobs.uniform(layers, 1)
    flat = tasks.grad_buffers(module)
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(tokens, m.d_model, generator=g, device=device).to(dtype)
    ctx = tasks.Ctx(module=module, cfg=m, knobs=knobs, groups=None, world=1,
                    layers=tasks.new_layer_states(m, knobs, ep, device, dtype), x=x, target=x.clone(), flat=flat,
                    retain_graph=True)
    return ctx


def _fake_expert_input(ctx: tasks.Ctx, model: MoEModel, tokens: int) -> None:
    ls = ctx.layers[0]
    S, El = ls.S, ls.El
    copies = work.routed_copies(model, tokens)
    per = torch.full((S * El,), copies // (S * El), dtype=torch.long)
    per[: copies % (S * El)] += 1
    cnt = torch.zeros(S, S, El, 1, dtype=torch.long)
    cnt[:, 0, :, 0] = per.view(S, El)
    ls.cnt[0] = cnt.numpy()
    g = torch.Generator(device=ctx.x.device).manual_seed(2)
    ls.xin[0] = torch.randn(copies, ls.M, generator=g, device=ctx.x.device).to(ctx.x.dtype)


def make_bench(kind: str, model: MoEModel, tokens: int, device: torch.device | str, dtype: torch.dtype,
               ep: int = 1) -> Callable[[], None]:
    """Closure running compute task ``kind`` once on ``tokens`` tokens (see module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown compute task kind {kind!r}; expected one of {KINDS}")
    if kind.startswith("shared") and not model.shared_experts:
        raise ValueError(f"model {model.name} has no shared experts")
    device = torch.device(device)
    if kind in ("attn_fwd", "attn_bwd", "loss"):
        return _attn_bench(kind, model, tokens, device, dtype, ep)
    ctx = _ctx(model, tokens, device, dtype, ep)
    ls = ctx.layers[0]

    if kind.startswith("shared"):
        ls.u.normal_()
        if kind == "shared_fwd":
            return lambda: tasks.shared_fwd(ctx, 0, 0, 1)
        tasks.shared_fwd(ctx, 0, 0, 1)
        ls.dy.normal_()
        return lambda: tasks.shared_bwd(ctx, 0, 0, 1)

    _fake_expert_input(ctx, ctx.cfg, tokens)
    xin = ls.xin[0]
    if kind == "expert_fwd":
        def efwd() -> None:
            ls.xin[0] = xin
            tasks.expert_fwd(ctx, 0, 0, 1)
        return efwd
    tasks.expert_fwd(ctx, 0, 0, 1)
    eb: ExpertBwd = ls.expert_bwd(0)
    eb.dy = torch.randn_like(xin)
    ls.ebwd[0] = eb
    dy_msg = eb.dy

    def edx() -> None:
        eb.dy = dy_msg
        tasks.expert_dx(ctx, 0, 0, 1)
    if kind == "expert_dx":
        return edx
    edx()
    return lambda: tasks.expert_dw(ctx, 0, 0, 1)


def _attn_bench(kind: str, model: MoEModel, tokens: int, device: torch.device, dtype: torch.dtype,
                ep: int) -> Callable[[], None]:
    """attn_fwd / attn_bwd as layer 1 of two, loss after one layer; layer 0's expert side is
    replaced by random combined rows."""
    ctx = _ctx(model, tokens, device, dtype, ep, layers=1 if kind == "loss" else 2)
    ctx.graphs = graphs.capture(ctx.module, ctx.knobs, ctx.layers)  # as the executor runs it (CUDA)
    ctx.route_graphs = route.capture(ctx.layers, ctx.cfg, ctx.knobs)
    l0 = ctx.layers[0]
    tasks.attn_fwd(ctx, 0, 0, 1)
    g = torch.Generator(device=device).manual_seed(3)
    l0.comb[0] = torch.randn(l0.fci[0].numel(), l0.M, generator=g, device=device).to(dtype)

    def reset_l0() -> None:       # layer 0 as before its merge / before its backward
        l0.scattered[0] = False
        l0.dy_ready[:] = bytes(l0.T)
        l0.bsend = [None] * l0.rb

    if kind == "loss":
        def loss() -> None:
            reset_l0()
            tasks.loss(ctx, 0, 0, 1)
        return loss
    l1 = ctx.layers[1]

    def fwd() -> None:
        reset_l0()
        l1.pieces.clear()
        l1.counters.zero_()
        tasks.attn_fwd(ctx, 1, 0, 1)
    if kind == "attn_fwd":
        return fwd
    fwd()
    l1.dy.normal_()
    # What dispatch_bwd leaves for attn_bwd in a real step: layer 1's combine_bwd send rows
    # (built from dy) and the received input gradients of its kept copies, scatter-added
    # into du by attn_bwd (one row per kept copy, as many as were sent).
    tasks._mark_ready(ctx, 1, 0, l1.T)
    for j in range(l1.rb):
        l1.dxr[j] = torch.randn(l1.bci[j].numel(), l1.M, generator=g, device=device).to(dtype)

    def bwd() -> None:
        reset_l0()
        tasks.attn_bwd(ctx, 1, 0, 1)
    bwd.ctx = ctx  # type: ignore[attr-defined]  # for inspection (tests)
    return bwd


def task_flops(kind: str, m: MoEModel, tokens: int) -> float:
    """Work of one task as :mod:`moesched.graph` charges it: FLOPs (loss: elements)."""
    f = {"attn_fwd": work.attn_fwd_flops, "attn_bwd": work.attn_bwd_flops, "expert_fwd": work.expert_fwd_flops,
         "expert_dx": work.expert_fwd_flops, "expert_dw": work.expert_fwd_flops,
         "shared_fwd": work.shared_fwd_flops, "loss": work.loss_elements}
    return 2 * work.shared_fwd_flops(m, tokens) if kind == "shared_bwd" else f[kind](m, tokens)


def shape_bench(model: MoEModel, kind: str, tokens: int, device: torch.device, world: int
                ) -> tuple[Callable[[], None], float]:
    """(closure, FLOPs) of ``kind`` on ``tokens`` tokens of ``model``'s :func:`bench_shape`,
    in the model's dtype on CUDA (fp32 on CPU), expert GEMMs sized as with EP = ``world``
    where it divides the experts (else EP = 1)."""
    m = bench_shape(model, kind, tokens)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[m.dtype] \
        if device.type == "cuda" else torch.float32
    ep = world if m.experts % world == 0 else 1
    return make_bench(kind, m, tokens, device, dtype, ep=ep), task_flops(kind, m, tokens)
