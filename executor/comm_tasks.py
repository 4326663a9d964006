"""The communication task kinds of :mod:`moesched.graph`: the all-to-alls of a MoE layer
(:data:`moesched.kinds.A2A_KINDS`) and the gradient all-reduce ``grad_ar``, on the per-step
context :class:`executor.tasks.Ctx` (the compute kinds are in :mod:`executor.tasks`).

Each all-to-all task takes ``(ctx, layer, chunk, hop)`` (``grad_ar``: the node's
attributes), issues its collectives async on the current (link) stream and returns the
Works. ``hop`` None: one flat all-to-all over the EP group; "intra" / "inter": one hop of
the two-hop all-to-all (:func:`executor.comm.hop_plan`), the owner-to-expert direction
(dispatch, combine_bwd) intra-node first, the way back (combine, dispatch_bwd) inter-node
first; the first hop's received rows wait in ``ctx.hold`` for the second. Rows are
[rows, M], one per kept routed copy, with split sizes per rank from the layer's routing
counts (``LayerState``: ``fsplit``, ``bsplit``, ``cnt``):

* dispatch: forward chunk c's send rows ``fsend[c]`` to the experts' ranks -> ``xin[c]``
  (on CUDA it first waits for the chunk's routing counts, exchanged by attn_fwd);
* combine: the expert outputs ``eout[c]`` back to the tokens' owners -> ``comb[c]`` (and,
  after two hops, each row's flat position ``comb_pos[c]``);
* combine_bwd: backward chunk j's rows w * dy ``bsend[j]`` to the experts -> ``ebwd[j].dy``;
* dispatch_bwd: the expert input gradients ``edx[j]`` back -> ``dxr[j]`` (``dxr_pos[j]``);
* grad_ar: all-reduce (SUM) of bytes [offset, offset+work) of the "dense" or "expert" flat
  gradient buffer (``ctx.flat``) over that group (``ctx.groups.dense``: every rank;
  ``ctx.groups.expert``: the expert-data-parallel ranks).

``A2A`` maps each all-to-all kind to its function.
"""
from __future__ import annotations

from typing import Callable

import torch

from executor.comm import a2a, all_reduce_sum, hop_plan
from executor.tasks import Ctx


def _a2a(ctx: Ctx, key: tuple, hop: str | None, forward: bool, send: Callable[[], torch.Tensor],
         send_split: list[int], recv_split: list[int], R: Callable[[], torch.Tensor]
         ) -> tuple[torch.Tensor | None, torch.Tensor | None, list]:
    """Flat all-to-all, or one hop of the two-hop one. Returns (recv or None while the first
    hop's rows are held, flat position of each received row or None, works)."""
    g = ctx.groups
    if hop is None:
        recv, w = a2a(send(), send_split, recv_split, g.ep, ctx.compute_stream)
        return recv, None, [w]
    first = hop == ("intra" if forward else "inter")
    src = send() if first else ctx.hold.pop(key)
    idx, ss, rs, pos = hop_plan(R(), g.ep_rank, g.node_size, hop, forward)
    ctx.alive.append(src)
    if idx is not None:
        src = src[ctx.h2d(idx)]
        ctx.alive.append(src)
    recv, w = a2a(src, ss, rs, g.intra if hop == "intra" else g.inter, ctx.compute_stream)
    if first:
        ctx.hold[key] = recv
        return None, None, [w]
    return recv, pos, [w]


@torch.no_grad()
def dispatch(ctx: Ctx, l: int, c: int, hop: str | None) -> list:
    ls = ctx.layers[l]
    ls.ready(c)                                # waits for the chunk's counts (CUDA)
    rs = ls.cnt[c][:, ctx.me].sum((1, 2)).tolist()
    recv, _, works = _a2a(ctx, ("d", l, c), hop, True, lambda: ls.fsend[c], ls.fsplit[c], rs,
                          lambda: ls.matrix_fwd(c))
    if recv is not None:
        ls.xin[c] = recv
    return works


@torch.no_grad()
def combine(ctx: Ctx, l: int, c: int, hop: str | None) -> list:
    ls = ctx.layers[l]
    ls.ready(c)
    ss = ls.cnt[c][:, ctx.me].sum((1, 2)).tolist()
    recv, pos, works = _a2a(ctx, ("c", l, c), hop, False, lambda: ls.eout[c], ss, ls.fsplit[c],
                            lambda: ls.matrix_fwd(c).T)
    if recv is not None:
        ls.comb[c], ls.comb_pos[c] = recv, pos
    return works


@torch.no_grad()
def combine_bwd(ctx: Ctx, l: int, j: int, hop: str | None) -> list:
    ls = ctx.layers[l]
    if ls.ebwd[j] is None:
        ls.ebwd[j] = ls.expert_bwd(j)
    recv, _, works = _a2a(ctx, ("cb", l, j), hop, True, lambda: ls.bsend[j], ls.bsplit[j], ls.ebwd[j].recv_split,
                          lambda: ls.matrix_bwd(j))
    if recv is not None:
        ls.ebwd[j].dy = recv
    return works


@torch.no_grad()
def dispatch_bwd(ctx: Ctx, l: int, j: int, hop: str | None) -> list:
    ls = ctx.layers[l]
    recv, pos, works = _a2a(ctx, ("db", l, j), hop, False, lambda: ls.edx[j], ls.ebwd[j].recv_split, ls.bsplit[j],
                            lambda: ls.matrix_bwd(j).T)
    if recv is not None:
        ls.dxr[j], ls.dxr_pos[j] = recv, pos
    return works


@torch.no_grad()
def grad_ar(ctx: Ctx, node: dict) -> list:
    """All-reduce (SUM) bytes [offset, offset+work) of the group's flat gradient buffer,
    rounded to whole elements: elements [off // b, (off + n) // b)."""
    flat = ctx.flat[node["group"]]
    b = flat.element_size()
    s, e = node["offset_bytes"] // b, (node["offset_bytes"] + int(node["work"])) // b
    if e <= s:
        return []
    pg = ctx.groups.dense if node["group"] == "dense" else ctx.groups.expert
    return [all_reduce_sum(flat[s:e], pg)]

A2A = {"dispatch": dispatch, "combine": combine, "combine_bwd": combine_bwd, "dispatch_bwd": dispatch_bwd}
