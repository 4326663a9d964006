"""One function per task kind of :mod:`moesched.graph`, on a per-step context.

Compute tasks take ``(ctx, layer, chunk, nchunks)`` and run on the current (compute) stream
(:data:`COMPUTE`, by kind); the communication tasks are in :mod:`executor.comm_tasks`.

Chunk c of n covers tokens [c*T/n, (c+1)*T/n) of the rank's T = B*L flattened tokens (whole
samples when attention is chunked). Gradients are exact for any r_fwd, r_bwd:

* attn_fwd merges the previous layer's output for its tokens (h + shared + sum_j w_j *
  combined_j), runs norms/attention/router under autograd on a detached leaf (split at
  backward-chunk boundaries when attention is chunked, so attn_bwd chunks own whole
  subgraphs), routes with capacity counters carried across chunks, builds the dispatch
  send rows sorted by (destination, expert, token, slot) (:func:`executor.route.route_fwd`,
  a CUDA graph on GPUs) and starts the all-gather of the counts per (source, destination,
  local expert, backward chunk); on CUDA the host waits for them only where a task needs
  them (``LayerState.ready``: the chunk's dispatch).
* the expert side keeps inputs and pre-activations; backward chunk j selects its copies
  from the counts alone (no second exchange).
* The operators each compute task runs (GEMM shapes, grouped expert GEMMs, attention,
  memory-bound kernels) are listed once, torch-free, in :func:`moesched.ops.task_ops`: the
  profiler times them and the cost model composes task costs from them;
  ``tests/test_ops.py`` checks that these functions run exactly the recipe's GEMMs. Change
  both together.
* attn_bwd sums dL/du (expert copies, shared path), dL/dw (router weights: dy . combined)
  and dL/dh = dy into the saved subgraphs with autograd; the leaf gradient is the previous
  layer's output gradient, from which its combine_bwd send rows (w * dy) are built.
"""
from __future__ import annotations

import time

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from moesched.knobs import Knobs
from moesched.models import MoEModel

from executor import route, routers
from executor.comm import Groups
from executor.ffn import experts_dw, experts_dx, experts_fwd, ffn_dw, ffn_dx, ffn_fwd, grouped
from executor.graphs import piece_cuts
from executor.layers import MoEModule, attention_norm, attention_router_out, grad_buffers  # noqa: F401  (grad_buffers: re-exported)
from executor.staging import Staging
from executor.state import LayerState, Piece, new_layer_states  # noqa: F401
from moesched.work import chunk_range


@dataclass
class Ctx:
    """Per-step context of one rank. x, target [T, M]; flat: "dense"/"expert" gradient buffers."""

    module: MoEModule
    cfg: MoEModel
    knobs: Knobs
    groups: Groups | None
    world: int
    layers: list[LayerState]
    x: torch.Tensor
    target: torch.Tensor
    flat: dict[str, torch.Tensor]
    compute_stream: Any = None          # torch.cuda.Stream on CUDA, else None
    meta_stream: Any = None             # CUDA: side stream of the routing-count exchange
    graphs: dict | None = None          # CUDA graphs of attention pieces (executor.graphs)
    route_graphs: Any = None            # CUDA graphs of the routing bookkeeping (executor.route)
    staging: Staging | None = None      # host index arrays to the device (executor.staging)
    loss: torch.Tensor | None = None
    retain_graph: bool = False          # benchmarks replay attn_bwd
    hold: dict = field(default_factory=dict)    # first-hop results of two-hop all-to-alls
    alive: list = field(default_factory=list)   # buffers read by a link stream: kept to step end
    host_wait_s: float = 0.0            # host time blocked on routing counts so far this step, s
    bench_counts: dict = field(default_factory=dict)  # benchmarks (groups None): counts read once
    grads_zeroed: Any = None            # CUDA: event of the gradient buffers' zeroing (side stream)
    head: Any = None                    # loss over the last block's output: (y [T, M], world) -> (loss, dy)
    dx: torch.Tensor | None = None      # [T, M]: filled with dL/d(first block's input) when given

    @property
    def me(self) -> int:
        return 0 if self.groups is None else self.groups.ep_rank

    def h2d(self, a: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A host index array on this rank's device, copied on the current stream without a
        host sync (:mod:`executor.staging`; a tensor passes through ``.to``)."""
        dev = self.module.device
        if isinstance(a, torch.Tensor):
            return a.to(dev)
        if dev.type != "cuda":
            return torch.from_numpy(np.ascontiguousarray(a))
        if self.staging is not None:
            return self.staging.put(a)
        return torch.from_numpy(np.ascontiguousarray(a)).pin_memory().to(dev, non_blocking=True)


# ---- forward ---------------------------------------------------------------------------
def merge(ctx: Ctx, l: int, a: int, b: int) -> torch.Tensor:
    """Output y [b-a, M] of layer l for tokens [a, b): h + shared + sum_j w_j combined_j."""
    ls = ctx.layers[l]
    if ls.dense:
        return ls.h[a:b] + ls.shared_out[a:b]
    for c in range(ls.rf):
        fa, fb = ls.frange(c)
        if fa < b and fb > a and not ls.scattered[c]:
            ls.ready(c)
            ci = ls.fci[c] if ls.comb_pos[c] is None else ls.fci[c][ctx.h2d(ls.comb_pos[c])]
            ls.comb_full.index_copy_(0, ci, ls.comb[c])
            ls.scattered[c] = True
    comb = ls.comb_full.view(ls.T, ls.k, ls.M)[a:b]
    y = ls.h[a:b] + (ls.w[a:b, :, None] * comb).sum(1).to(ls.h.dtype)
    if ls.shared_out is not None:
        y = y + ls.shared_out[a:b]
    return y


def _exchange_counts(ctx: Ctx, ls: LayerState, cnt: torch.Tensor, c0: int) -> Callable[[], np.ndarray]:
    """Start the all-gather of counts cnt [nc, S_dst, El, rb] over the EP group; return a
    function giving every source's counts [S_src, nc, S_dst, El, rb] on the host (numpy).

    CUDA: the all-gather (NCCL, own group) and the copy to pinned host memory run on the
    meta stream and the function waits for that copy alone, so the host is free until the
    first task that needs the split sizes. The device and pinned buffers are the layer
    state's, one pair per exchange of a step (keyed by its first dispatch chunk c0), kept
    across steps (``ls.exchange``). gloo and benchmarks: done at once."""
    if ctx.groups is None:   # benchmark: every source sends alike; the same input routes alike
        key = (id(ls), tuple(cnt.shape))  # on every call, so the counts are read back once and
        if key not in ctx.bench_counts:   # timed calls do not synchronise the host
            ctx.bench_counts[key] = np.broadcast_to(cnt.cpu().numpy(), (ls.S, *cnt.shape))
        allc = ctx.bench_counts[key]
        return lambda: allc
    if not cnt.is_cuda or ctx.meta_stream is None:
        parts = [torch.empty_like(cnt) for _ in range(ls.S)]
        dist.all_gather(parts, cnt, group=ctx.groups.meta)
        allc = torch.stack(parts).cpu().numpy()
        return lambda: allc
    shape = (ls.S, *cnt.shape)
    if ls.exchange.get(c0, (None,))[0] is None or ls.exchange[c0][0].shape != shape:
        ls.exchange[c0] = (torch.empty(shape, dtype=cnt.dtype, device=cnt.device),
                           torch.empty(shape, dtype=cnt.dtype, pin_memory=True))
    out, host = ls.exchange[c0]
    ms = ctx.meta_stream
    ms.wait_stream(torch.cuda.current_stream(cnt.device))
    with torch.cuda.stream(ms):
        dist.all_gather_into_tensor(out, cnt, group=ctx.groups.meta)
        host.copy_(out, non_blocking=True)
        done = torch.cuda.Event()
        done.record(ms)
    ctx.alive.append(cnt)                      # read by the meta stream: kept to step end

    def get() -> np.ndarray:
        t = time.perf_counter()
        done.synchronize()
        ctx.host_wait_s += time.perf_counter() - t
        return host.numpy()
    return get


def _resolve_counts(ctx: Ctx, ls: LayerState, chunks: list[int], get: Callable[[], np.ndarray]) -> None:
    """Counts of dispatch chunks on the host: cnt, split sizes, send rows cut to kept copies."""
    allc = get()
    mine = allc[ctx.me]
    for i, cc in enumerate(chunks):
        ls.cnt[cc] = allc[:, i].copy()         # the pinned buffer is the next step's too
        ls.fsplit[cc] = mine[i].sum((1, 2)).tolist()
        kept = sum(ls.fsplit[cc])
        ls.fci[cc], ls.fsend[cc] = ls.fci[cc][:kept], ls.fsend[cc][:kept]


@torch.no_grad()
def attn_fwd(ctx: Ctx, l: int, c: int, n: int) -> None:
    m, ls = ctx.cfg, ctx.layers[l]
    L, M, k = m.seq_len, m.d_model, ls.k
    a, b = chunk_range(ls.T, n, c)
    x = ctx.x[a:b] if l == 0 else merge(ctx, l - 1, a, b)
    p = ctx.module.blocks[l]
    cuts = piece_cuts(ls.T, ls.rb, ctx.knobs.at_chunked, a, b)
    want_dx = l > 0 or ctx.dx is not None
    if ls.dense:
        _dense_attn_fwd(ctx, l, x, a, cuts, want_dx)
        return
    for pa, pb in zip(cuts, cuts[1:]):
        graphed = ctx.graphs.get((l, pa, pb)) if ctx.graphs and (l > 0 or ctx.dx is None) else None
        if graphed is not None:  # writes h, u, w, idx of the piece into the layer state
            graphed.forward(x[pa - a:pb - a])
            ls.pieces.append(Piece(pa, pb, graphed=graphed))
            continue
        xl = x[pa - a:pb - a].detach().reshape(-1, L, M).requires_grad_(want_dx)
        with torch.enable_grad():
            h, u, out = attention_router_out(xl, p, m)
        w, idx = out.w, out.idx
        ls.pieces.append(Piece(pa, pb, xl, h, u, w, router=out if routers.has_aux(m) else None))
        ls.h[pa:pb] = h.detach().reshape(-1, M)
        ls.u[pa:pb] = u.detach().reshape(-1, M)
        ls.w[pa:pb] = w.detach().reshape(-1, k)
        ls.idx[pa:pb] = idx.reshape(-1, k)
    chunks = [c] if ctx.knobs.at_chunked else list(range(ls.rf))
    rg = ctx.route_graphs
    cnt = rg.route_fwd(ls, (l, c, n), chunks) if rg is not None else route.route_fwd(ls, m, a, b, chunks)
    get = _exchange_counts(ctx, ls, cnt, chunks[0])
    ls.defer(chunks, lambda: _resolve_counts(ctx, ls, chunks, get))
    if ctx.meta_stream is None:
        ls.ready(c)


def _dense_attn_fwd(ctx: Ctx, l: int, x: torch.Tensor, a: int, cuts: list[int], want_dx: bool) -> None:
    """Attention + norms of dense layer l (no router) for the pieces [cuts[i], cuts[i+1])."""
    m, ls, p = ctx.cfg, ctx.layers[l], ctx.module.blocks[l]
    for pa, pb in zip(cuts, cuts[1:]):
        xl = x[pa - a:pb - a].detach().reshape(-1, m.seq_len, m.d_model).requires_grad_(want_dx)
        with torch.enable_grad():
            h, u = attention_norm(xl, p, m)
        ls.pieces.append(Piece(pa, pb, xl, h, u))
        ls.h[pa:pb] = h.detach().reshape(-1, m.d_model)
        ls.u[pa:pb] = u.detach().reshape(-1, m.d_model)


@torch.no_grad()
def shared_fwd(ctx: Ctx, l: int, c: int, n: int) -> None:
    ls, p = ctx.layers[l], ctx.module.blocks[l]
    a, b = ls.frange(c)
    y, h1, h3 = ffn_fwd(ls.u[a:b], p.sw1, p.sw2, p.sw3, p.kind)
    ls.shared_out[a:b] = y
    ls.sh1[a:b] = h1
    if h3 is not None:
        ls.sh3[a:b] = h3


def _offs(ctx: Ctx, ne: list[int], x: torch.Tensor) -> torch.Tensor | None:
    """Cumulative row ends [El] (int32, on x's device) for the grouped GEMM, or None (loop)."""
    if not grouped(x) or not sum(ne):
        return None
    return ctx.h2d(np.cumsum(ne, dtype=np.int32))


@torch.no_grad()
def expert_fwd(ctx: Ctx, l: int, c: int, n: int) -> None:
    ls, p = ctx.layers[l], ctx.module.blocks[l]
    ch = ls.expert_chunk(c, ctx.me)
    perm = ctx.h2d(ch.perm)
    x = ls.xin[c].index_select(0, perm)
    y, h1, h3 = experts_fwd(x, ch.ne, _offs(ctx, ch.ne, x), p.w1, p.w2, p.w3, p.kind)
    ch.x, ch.h1, ch.h3 = x, h1, h3
    ls.ech[c] = ch
    ls.eout[c] = torch.empty_like(y).index_copy_(0, perm, y)
    ls.xin[c] = None


@torch.no_grad()
def loss(ctx: Ctx, l: int, c: int, n: int) -> None:
    """Merge the last layer, loss_r = mean((y - target)^2); seed dy = d(loss_r / world)/dy.
    With ``ctx.head`` (a language model's norm, output head and loss: :mod:`executor.lm`)
    the head gives loss_r and dy instead."""
    ls = ctx.layers[-1]
    if ctx.grads_zeroed is not None:  # every gradient write comes after the loss
        torch.cuda.current_stream().wait_event(ctx.grads_zeroed)
    if ctx.head is not None:
        ctx.loss, dy = ctx.head(merge(ctx, len(ctx.layers) - 1, 0, ls.T), ctx.world)
        ls.dy.copy_(dy)
    else:
        diff = merge(ctx, len(ctx.layers) - 1, 0, ls.T).float() - ctx.target.float()
        ctx.loss = (diff * diff).mean().detach()
        ls.dy.copy_(diff * (2.0 / (diff.numel() * ctx.world)))
    if routers.has_aux(ctx.cfg):  # every layer's forward is done: f_i and every piece are known
        ctx.loss = ctx.loss + sum(_piece_aux(ctx, ll, pc).detach() for ll in ctx.layers for pc in ll.pieces
                                  if not ll.dense)
    _mark_ready(ctx, len(ctx.layers) - 1, 0, ls.T)


def _piece_aux(ctx: Ctx, ls: LayerState, pc: Piece) -> torch.Tensor:
    """This piece's share of the rank's auxiliary router losses (their sum over pieces and
    layers is the rank's :func:`executor.routers.aux_loss` averaged over layers)."""
    return routers.piece_aux(pc.router, ls.idx, ctx.cfg) / len(ctx.layers)


# ---- backward --------------------------------------------------------------------------
def _mark_ready(ctx: Ctx, l: int, a: int, b: int) -> None:
    """dy of layer l's tokens [a, b) exists: build the combine_bwd send rows (w * dy) of the
    backward chunks now covered (:func:`executor.route.rows_bwd`), cut to the kept copies."""
    ls, rg = ctx.layers[l], ctx.route_graphs
    ls.dy_ready[a:b] = b"\x01" * (b - a)
    if ls.dense:  # no combine_bwd
        return
    for j in range(ls.rb):
        ja, jb = ls.brange(j)
        if ls.bsend[j] is None and ls.dy_ready.find(0, ja, jb) < 0:
            split = ls.matrix_bwd(j)[ctx.me]
            ci, rows = rg.rows_bwd((l, j)) if rg is not None else route.rows_bwd(ls, j)
            n = int(split.sum())
            ls.bci[j], ls.bsend[j], ls.bsplit[j] = ci[:n], rows[:n], split.tolist()


def _saved(ls: LayerState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if ls.saved is None:
        x = torch.cat([ch.x for ch in ls.ech])
        h1 = torch.cat([ch.h1 for ch in ls.ech])
        h3 = torch.cat([ch.h3 for ch in ls.ech]) if ls.ech[0].h3 is not None else None
        ls.saved = (x, h1, h3)
        for ch in ls.ech:
            ch.x = ch.h1 = ch.h3 = None
    return ls.saved


@torch.no_grad()
def expert_dx(ctx: Ctx, l: int, j: int, n: int) -> None:
    ls, p = ctx.layers[l], ctx.module.blocks[l]
    eb = ls.ebwd[j]
    x, h1, h3 = _saved(ls)
    sel, perm = ctx.h2d(eb.sel), ctx.h2d(eb.perm)
    eb.sel, eb.perm = sel, perm
    dy = eb.dy.index_select(0, perm)
    h1s = h1.index_select(0, sel)
    h3s = h3.index_select(0, sel) if h3 is not None else None
    eb.offs = _offs(ctx, eb.ne, dy)
    dx, g1, g3 = experts_dx(dy, h1s, h3s, eb.ne, eb.offs, p.w1, p.w2, p.w3, p.kind)
    eb.dy, eb.g_h1, eb.g_h3, eb.h1, eb.h3 = dy, g1, g3, h1s, h3s
    ls.edx[j] = torch.empty_like(dx).index_copy_(0, perm, dx)


@torch.no_grad()
def expert_dw(ctx: Ctx, l: int, j: int, n: int) -> None:
    ls, p = ctx.layers[l], ctx.module.blocks[l]
    eb = ls.ebwd[j]
    x = _saved(ls)[0].index_select(0, eb.sel)
    experts_dw(eb.dy, x, eb.h1, eb.h3, eb.g_h1, eb.g_h3, eb.ne, eb.offs, p.w1.grad, p.w2.grad,
               None if p.w3 is None else p.w3.grad, p.kind)
    if not ctx.retain_graph:  # keep recv_split for dispatch_bwd
        eb.dy = eb.g_h1 = eb.g_h3 = eb.h1 = eb.h3 = None


@torch.no_grad()
def shared_bwd(ctx: Ctx, l: int, j: int, n: int) -> None:
    ls, p = ctx.layers[l], ctx.module.blocks[l]
    a, b = ls.brange(j)
    dy, h1 = ls.dy[a:b], ls.sh1[a:b]
    h3 = ls.sh3[a:b] if p.kind == "swiglu" else None
    dx, g1, g3 = ffn_dx(dy, h1, h3, p.sw1, p.sw2, p.sw3, p.kind)
    ls.du_shared[a:b] = dx
    ffn_dw(dy, ls.u[a:b], h1, h3, g1, g3, p.sw1.grad, p.sw2.grad, None if p.sw3 is None else p.sw3.grad, p.kind)


@torch.no_grad()
def attn_bwd(ctx: Ctx, l: int, c: int, n: int) -> None:
    ls = ctx.layers[l]
    a, b = chunk_range(ls.T, n, c)
    du = ls.du_shared[a:b].clone() if ls.du_shared is not None else torch.zeros_like(ls.u[a:b])
    for j in range(ls.rb):
        ja, jb = ls.brange(j)
        if a <= ja and jb <= b and ls.dxr[j] is not None:
            ci = ls.bci[j] if ls.dxr_pos[j] is None else ls.bci[j][ctx.h2d(ls.dxr_pos[j])]
            du.index_add_(0, ci // ls.k - a, ls.dxr[j])
            if not ctx.retain_graph:
                ls.dxr[j] = None
    dw = None
    dy = ls.dy[a:b]
    keep = []
    for pc in ls.pieces:
        if not (a <= pc.a and pc.b <= b):
            keep.append(pc)
            continue
        s = slice(pc.a - a, pc.b - a)
        if pc.graphed is not None:  # reads dy and the combined rows; writes p.grad, the previous dy
            pc.graphed.backward(du[s])
            if l > 0:
                _mark_ready(ctx, l - 1, pc.a, pc.b)
            continue
        if dw is None and not ls.dense:
            comb = ls.comb_full.view(ls.T, ls.k, ls.M)[a:b]
            dw = (ls.dy[a:b, None, :].float() * comb.float()).sum(-1)
        outs, seeds = [pc.h, pc.u], [dy[s].view_as(pc.h), du[s].view_as(pc.u)]
        if pc.w is not None:
            outs.append(pc.w)
            seeds.append(dw[s].view_as(pc.w))
        if pc.router is not None:  # d(aux_r / world) for the auxiliary router losses
            with torch.enable_grad():
                outs.append(_piece_aux(ctx, ls, pc))
            seeds.append(torch.full_like(outs[-1], 1.0 / ctx.world))
        torch.autograd.backward(outs, seeds, retain_graph=ctx.retain_graph)
        if l > 0:
            ctx.layers[l - 1].dy[pc.a:pc.b] = pc.x.grad.reshape(-1, ls.M)
            _mark_ready(ctx, l - 1, pc.a, pc.b)
        elif ctx.dx is not None:
            ctx.dx[pc.a:pc.b] = pc.x.grad.reshape(-1, ls.M)
    if not ctx.retain_graph:
        ls.pieces = keep


COMPUTE = {"attn_fwd": attn_fwd, "shared_fwd": shared_fwd, "expert_fwd": expert_fwd, "loss": loss,
           "expert_dx": expert_dx, "expert_dw": expert_dw, "shared_bwd": shared_bwd, "attn_bwd": attn_bwd}
