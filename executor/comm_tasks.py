"""The communication tasks of :mod:`moesched.graph`, on the per-step context of
:mod:`executor.tasks`: the four all-to-alls of an MoE layer (flat, or one hop of the two-hop
one) and the gradient all-reduce chunks.

They take ``(ctx, layer, chunk, hop)`` (:data:`A2A`, by kind; ``grad_ar``: the node's
attributes), issue their collectives async on the current (link) stream and return the
Works. An all-to-all moves whole rows of the layer's width M: dispatch sends the rows the
forward routing built (:mod:`executor.route`), combine sends the expert outputs back,
combine_bwd sends the output gradients to the experts and dispatch_bwd the input gradients
back.
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
