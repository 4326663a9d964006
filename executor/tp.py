"""Tensor-parallel attention and the Pipeline MoE layer on torch.distributed
(:mod:`moesched.layouts`; Chen et al., "Pipeline MoE", §3.3; Shoeybi et al., "Megatron-LM",
§3; Korthikanti et al., MLSys'23, §4.2.2 for sequence parallelism).

A TP group of t ranks runs the blocks of :mod:`executor.layers` on shards:

* attention: rank r holds query heads [r nq/t, (r+1) nq/t) and key/value heads
  [r nkv/t, (r+1) nkv/t) of ``wqkv`` (column parallel) and the matching columns of ``wo``
  (row parallel); ``copy_to_tp`` (identity forward, all-reduce backward) before the
  projections, ``reduce_from_tp`` (all-reduce forward, identity backward) after ``wo``;
* MoE (PPMoE): the router runs replicated on every rank (same ``idx`` everywhere:
  :func:`block_forward` returns it so that a caller can assert it); rank r keeps the rows
  of its E/t local experts [r E/t, (r+1) E/t) by index slicing, runs them one after
  another, writes the weighted outputs back by index assignment (``index_add``), and one
  ``reduce_from_tp`` sums the group's outputs; the MoE input goes through ``copy_to_tp``,
  the all-reduce of its gradient before the norm (PPMoE §3.3 (iv)). Shared experts are a
  TP FFN (hidden split t ways) summed by the same all-reduce;
* sequence parallel (``sp=True``): every [T, M] tensor outside attention and the experts is
  a contiguous token shard of T/t rows; ``gather_seq`` (all-gather forward, reduce-scatter
  backward) before a TP block and ``scatter_seq`` (reduce-scatter forward, all-gather
  backward) after it replace the two operators above.

Parameters whose gradient each rank computes only in part are summed over the group by
:func:`sync_replicated_grads`: the router ``wg`` (a rank back-propagates only its own
experts' weights) and the q/k norms (only its heads); with ``sp`` also ``norm1``/``norm2``
(only its tokens). Reduce-scatter is an all-reduce and a slice (gloo has no reduce-scatter).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from moesched.models import MoEModel

from executor.layers import LayerParams, capacity, keep_mask, rmsnorm, rope


def _all_reduce(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    x = x.contiguous().clone()
    dist.all_reduce(x, group=group)
    return x


def _all_gather_rows(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, 0)


def _reduce_scatter_rows(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    t, r = dist.get_world_size(group), dist.get_rank(group)
    return _all_reduce(x, group).chunk(t, 0)[r].contiguous()


class _CopyToTP(torch.autograd.Function):
    """Megatron's f: identity forward, all-reduce of the gradient backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return _all_reduce(g, ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    """Megatron's g: all-reduce forward, identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:  # type: ignore[override]
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return g, None


class _GatherSeq(torch.autograd.Function):
    """Sequence parallel: all-gather of token shards forward, reduce-scatter backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return _all_gather_rows(x, group)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return _reduce_scatter_rows(g, ctx.group), None


class _ScatterSeq(torch.autograd.Function):
    """Sequence parallel: reduce-scatter into token shards forward, all-gather backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return _reduce_scatter_rows(x, group)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return _all_gather_rows(g, ctx.group), None


class TPShard(nn.Module):
    """Rank ``r``'s shard of one block (``full``: the block's full :class:`LayerParams`),
    for a TP group of ``t`` ranks; names as LayerParams, sliced as the module docstring."""

    def __init__(self, full: LayerParams, m: MoEModel, r: int, t: int) -> None:
        super().__init__()
        hd, nq, nkv, E = m.hd, m.heads, m.n_kv_heads, m.experts
        q0, kv0, el = r * nq // t, r * nkv // t, E // t
        nql, nkvl = nq // t, nkv // t

        def cp(x: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(x.detach().clone())
        w = full.wqkv.detach()
        rows = [w[q0 * hd:(q0 + nql) * hd], w[(nq + kv0) * hd:(nq + kv0 + nkvl) * hd],
                w[(nq + nkv + kv0) * hd:(nq + nkv + kv0 + nkvl) * hd]]
        self.wqkv = cp(torch.cat(rows, 0))
        self.wo = cp(full.wo[:, q0 * hd:(q0 + nql) * hd])
        self.norm1, self.norm2, self.wg = cp(full.norm1), cp(full.norm2), cp(full.wg)
        self.qk_norm = m.qk_norm
        if m.qk_norm:
            self.q_norm, self.k_norm = cp(full.q_norm), cp(full.k_norm)
        self.w1 = cp(full.w1[r * el:(r + 1) * el])
        self.w3 = None if full.w3 is None else cp(full.w3[r * el:(r + 1) * el])
        self.w2 = cp(full.w2[r * el:(r + 1) * el])
        self.shared = full.shared
        if full.shared:
            sh = full.sw1.shape[0] // t
            self.sw1 = cp(full.sw1[r * sh:(r + 1) * sh])
            self.sw3 = None if full.sw3 is None else cp(full.sw3[r * sh:(r + 1) * sh])
            self.sw2 = cp(full.sw2[:, r * sh:(r + 1) * sh])
        self.r, self.t, self.el, self.nql, self.nkvl = r, t, el, nql, nkvl


def _ffn(m: MoEModel, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor | None) -> torch.Tensor:
    h = x @ w1.t()
    a = F.gelu(h) if m.expert_kind == "gpt" else F.silu(h) * (x @ w3.t())  # type: ignore[union-attr]
    return a @ w2.t()


def _attention(xn: torch.Tensor, p: TPShard, m: MoEModel, b: int, L: int) -> torch.Tensor:
    """Local heads of causal attention: xn [T, M] (full tokens) -> partial output [T, M]."""
    hd = m.hd
    qkv = xn @ p.wqkv.t()
    q, k, v = qkv.split([p.nql * hd, p.nkvl * hd, p.nkvl * hd], dim=-1)
    q, k, v = q.view(b, L, p.nql, hd), k.view(b, L, p.nkvl, hd), v.view(b, L, p.nkvl, hd)
    if m.qk_norm:
        q, k = rmsnorm(q, p.q_norm, m.norm_eps), rmsnorm(k, p.k_norm, m.norm_eps)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if m.rope_theta is not None:
        q, k = rope(q, m.rope_theta), rope(k, m.rope_theta)
    if p.nkvl != p.nql:
        k, v = k.repeat_interleave(p.nql // p.nkvl, dim=1), v.repeat_interleave(p.nql // p.nkvl, dim=1)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return a.transpose(1, 2).reshape(b * L, p.nql * hd) @ p.wo.t()


def _moe_local(u: torch.Tensor, p: TPShard, m: MoEModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Replicated router on u [T, M] (full tokens) and this rank's experts, serially: the
    partial output [T, M] and the dispatch idx [T, k] (identical on every rank)."""
    T = u.shape[0]
    probs = torch.softmax((u @ p.wg.t()).float(), dim=-1)
    w, idx = probs.topk(m.top_k, dim=-1)
    if m.norm_topk_prob:
        w = w / w.sum(-1, keepdim=True)
    kept = keep_mask(idx, m.experts, capacity(m, T))
    y = torch.zeros_like(u)
    for e in range(p.el):
        sel = (idx == p.r * p.el + e) & kept
        tok, j = sel.nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        out = _ffn(m, u[tok], p.w1[e], p.w2[e], None if p.w3 is None else p.w3[e])  # index slice
        y = y.index_add(0, tok, (w[tok, j, None] * out).to(y.dtype))                # index assign
    if p.shared:
        y = y + _ffn(m, u, p.sw1, p.sw2, p.sw3)
    return y, idx


def block_forward(x: torch.Tensor, p: TPShard, m: MoEModel, b: int, L: int, group: dist.ProcessGroup | None,
                  sp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One block on a TP rank: x [T, M] (T = b*L tokens; with ``sp`` this rank's T/t-token
    shard) -> (output of the same shape, the router's idx [T, k])."""
    if sp:
        h = x + _ScatterSeq.apply(_attention(_GatherSeq.apply(rmsnorm(x, p.norm1, m.norm_eps), group), p, m, b, L),
                                  group)
        y, idx = _moe_local(_GatherSeq.apply(rmsnorm(h, p.norm2, m.norm_eps), group), p, m)
        return h + _ScatterSeq.apply(y, group), idx
    h = x + _ReduceFromTP.apply(_attention(_CopyToTP.apply(rmsnorm(x, p.norm1, m.norm_eps), group), p, m, b, L),
                                group)
    y, idx = _moe_local(_CopyToTP.apply(rmsnorm(h, p.norm2, m.norm_eps), group), p, m)
    return h + _ReduceFromTP.apply(y, group), idx


def sync_replicated_grads(p: TPShard, group: dist.ProcessGroup | None, sp: bool) -> None:
    """Sum over the TP group the gradients each rank computes in part (module docstring)."""
    names = ["wg"] + (["q_norm", "k_norm"] if p.qk_norm else []) + (["norm1", "norm2"] if sp else [])
    for n in names:
        g = getattr(p, n).grad
        if g is not None:
            dist.all_reduce(g, group=group)


def grads_of(p: LayerParams) -> SimpleNamespace:
    """A LayerParams-shaped view of ``p``'s gradients (so TPShard slices them alike)."""
    names = ["norm1", "wqkv", "wo", "norm2", "wg", "w1", "w3", "w2", "sw1", "sw3", "sw2", "q_norm", "k_norm"]
    ns = SimpleNamespace(shared=p.shared)
    for n in names:
        t = getattr(p, n, None)
        setattr(ns, n, None if t is None else t.grad)
    return ns
