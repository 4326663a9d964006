"""Replicated and movable experts: MoE blocks whose routed experts live where a placement puts them.

:class:`PlacedMoE` is the model of :mod:`executor.layers` (same blocks, same
deterministic initialisation per (seed, layer, name, global expert), so
:class:`executor.layers.ReferenceModel` is its reference) with the routed experts of
layer l held as rank r holds them in ``placements[l]`` (:class:`moesched.placement.Placement`,
FlexMoE's vExperts: several ranks may hold replicas of one expert).

Forward of one layer on rank r (T tokens, k copies each; copies beyond capacity dropped as
:func:`executor.layers.keep_mask` does):

* the copies this rank routes to expert e (token-major order) are split over e's replicas
  in contiguous blocks, block i of n copies = [i n / R, (i+1) n / R) to the i-th replica
  (ascending rank): tokens of an expert split over its replicas; a *split* expert
  (``Placement.split``: each of its ranks holds a slice [lo, hi) of the hidden dimension,
  ``Placement.shard_range``: rows of w1/w3, columns of w2) gets every copy on each of its
  ranks;
* one uneven all-to-all (autograd-aware: its backward is the reverse all-to-all) carries
  the rows, sorted by (destination, expert); a count all-to-all tells every receiver how
  many rows of each expert each source sent;
* each held expert computes its rows; a reverse all-to-all brings the outputs back, a
  split expert's partial outputs (one per shard) are summed per copy, and
  y = h + sum_j w_j out_j (+ shared experts), as the reference.

Gradients (:meth:`PlacedStep.reduce`): dense gradients are summed over the world; the
gradient of expert e is the sum of its replicas' gradients (each saw part of e's copies),
all-reduced over the process group of e's replicas so that every replica holds the full
gradient and takes the same optimizer step: replicas stay identical (the ring the cost
model, :mod:`moesched.placement`, prices). A split expert's shards hold disjoint weights:
no all-reduce.

:meth:`PlacedStep.apply_placement` moves experts between steps: every replica a new
placement adds is copied, parameters *and* Adam state (``exp_avg``, ``exp_avg_sq``,
``step``), from the lowest-ranked current holder (:meth:`Placement.moves`), point to point;
a split expert's new or changed slices are assembled from the old holders' overlapping rows
(:mod:`executor.shardmove`); replicas and slices it removes are freed, and the optimizer's
parameter groups and state follow, so training continues exactly as if nothing moved.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from moesched.errors import MoeschedError
from moesched.models import MoEModel
from moesched.placement import Placement

from executor.layers import LayerParams, _randn, attention_router, capacity, keep_mask

#: Adam / AdamW state moved with an expert (``step`` is a 0-dim tensor in torch's Adam).
ADAM_STATE = ("exp_avg", "exp_avg_sq")


class _A2A(torch.autograd.Function):
    """Uneven all-to-all of rows whose backward is the reverse all-to-all of the gradients."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, recv_split: list[int], send_split: list[int]) -> torch.Tensor:  # type: ignore[override]
        ctx.splits = (recv_split, send_split)
        out = rows.new_empty((sum(recv_split),) + tuple(rows.shape[1:]))
        dist.all_to_all_single(out, rows.contiguous(), recv_split, send_split)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        recv_split, send_split = ctx.splits
        out = grad.new_empty((sum(send_split),) + tuple(grad.shape[1:]))
        dist.all_to_all_single(out, grad.contiguous(), send_split, recv_split)
        return out, None, None


def _names(m: MoEModel) -> tuple[str, ...]:
    return ("w1", "w3", "w2") if m.expert_kind == "swiglu" else ("w1", "w2")


def _init_expert(m: MoEModel, layer: int, e: int, seed: int, device: torch.device, dtype: torch.dtype
                 ) -> dict[str, torch.Tensor]:
    """Expert e of ``layer`` as :class:`LayerParams` initialises it (same keys)."""
    M, H = m.d_model, m.ffn_hidden
    shapes = {"w1": ((H, M), M), "w3": ((H, M), M), "w2": ((M, H), H)}
    return {n: _randn(shapes[n][0], shapes[n][1] ** -0.5, seed, f"L{layer}/{n}/e{e}", device, dtype) for n in _names(m)}


def hidden_slice(name: str, t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows [lo, hi) of the hidden dimension of expert weight ``name``: w1, w3 [H, M] ->
    [hi - lo, M]; w2 [M, H] -> [M, hi - lo] (a view)."""
    return t[:, lo:hi] if name == "w2" else t[lo:hi]


def hidden_dim(name: str) -> int:
    """The dimension of weight ``name`` that indexes the expert's hidden units."""
    return 1 if name == "w2" else 0


def ffn(kind: str, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor | None) -> torch.Tensor:
    """GPT (GELU) or SwiGLU expert on rows x [n, M] (as ReferenceModel._ffn)."""
    h = x @ w1.t()
    a = F.gelu(h) if kind == "gpt" else F.silu(h) * (x @ w3.t())
    return a @ w2.t()


def model_problem(m: MoEModel) -> str | None:
    """What of ``m`` :class:`PlacedMoE` does not run (it trains MoE blocks with top-k routing
    and the mean squared error only), or None."""
    if m.dense_layers:
        return f"dense layers {list(m.dense_layers)}"
    if m.router == "expert_choice":
        return "the expert_choice router"
    if m.aux_loss_coef or m.z_loss_coef:
        return "auxiliary router losses (aux_loss_coef, z_loss_coef)"
    if m.router == "deepseek_v3" and m.bias_update_rate:
        return "deepseek_v3's bias updates (bias_update_rate)"
    return None


def check_placements(placements: Sequence[Placement], m: MoEModel, world: int) -> None:
    """One-line MoeschedError unless there is one valid placement per layer over ``world``
    ranks with the model's experts (Placement.check: slots, duplicates, empty experts)."""
    if len(placements) != m.layers:
        raise MoeschedError(f"placement: {len(placements)} layers given, the model has {m.layers}")
    for l, p in enumerate(placements):
        p.check()
        if p.ranks != world or p.experts != m.experts:
            raise MoeschedError(f"placement of layer {l}: {p.experts} experts on {p.ranks} ranks, the job has "
                                f"{m.experts} experts on {world} ranks")


class PlacedMoE(nn.Module):
    """Blocks of rank ``rank`` of ``world`` with the routed experts ``placements`` give it
    (of a split expert, this rank's slice of the hidden dimension only)."""

    def __init__(self, m: MoEModel, placements: Sequence[Placement], rank: int, world: int, seed: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        check_placements(placements, m, world)
        self.cfg, self.rank, self.world, self.seed = m, rank, world, seed
        self.device, self.dtype = torch.device(device), dtype
        self.blocks = nn.ModuleList()
        for l in range(m.layers):
            lp = LayerParams(m, l, m.experts, 0, seed, self.device, dtype)  # one expert slot: dropped below
            for n in ("w1", "w3", "w2"):
                delattr(lp, n)
            self.blocks.append(lp)
        self.placements = list(placements)
        self.experts = nn.ModuleList(nn.ParameterDict() for _ in range(m.layers))
        for l, p in enumerate(self.placements):
            for e in p.held()[rank]:
                lo, hi = p.shard_range(e, rank, m.ffn_hidden)  # all of it unless e is split
                for n, t in _init_expert(m, l, e, seed, self.device, dtype).items():
                    self.experts[l][f"{e}_{n}"] = nn.Parameter(hidden_slice(n, t, lo, hi).clone())

    def dense_params(self) -> list[nn.Parameter]:
        return [q for b in self.blocks for q in b.dense_params()]

    def expert(self, layer: int, e: int) -> list[nn.Parameter]:
        """Parameters of held expert e of ``layer`` in :func:`_names` order."""
        return [self.experts[layer][f"{e}_{n}"] for n in _names(self.cfg)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output [B, L, M] of the last block for this rank's input x [B, L, M]."""
        m = self.cfg
        B, L, M = x.shape
        T = B * L
        for l, p in enumerate(self.blocks):
            h, u, w, idx = attention_router(x, p, m)
            uf, wf, idf = u.reshape(T, M), w.reshape(T, -1), idx.reshape(T, -1)
            t, j = keep_mask(idf, m.experts, capacity(m, T)).nonzero(as_tuple=True)
            out = self._experts(l, uf, idf[t, j], t)
            y = h.reshape(T, M).index_add(0, t, (wf[t, j, None] * out).to(h.dtype))
            if p.shared:
                y = y + ffn(m.expert_kind, uf, p.sw1, p.sw2, p.sw3)
            x = y.view(B, L, M)
        return x

    def _destinations(self, layer: int, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(copy, rank) of every row to send for the copies of expert ids e [n]: a replicated
        expert's copies in contiguous blocks over its replicas (one row each); a split
        expert's every copy once to each of its shard ranks. Both [n'] (n' >= n)."""
        plc = self.placements[layer]
        srcs, dsts = [], []
        for x in torch.unique(e).tolist():
            pos = (e == x).nonzero(as_tuple=True)[0]
            reps = plc.replicas[x]
            n, R = pos.numel(), len(reps)
            for i, r in enumerate(reps):
                part = pos if plc.split[x] else pos[i * n // R:(i + 1) * n // R]
                srcs.append(part)
                dsts.append(torch.full_like(part, r))
        if not srcs:
            return e[:0], e[:0]
        return torch.cat(srcs), torch.cat(dsts)

    def _experts(self, layer: int, uf: torch.Tensor, e: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Outputs [n, M] of the copies (token t [n], expert e [n]), computed where they were
        sent; a split expert's copy is the sum of its shards' partial outputs."""
        E, W = self.cfg.experts, self.world
        src, dst = self._destinations(layer, e)
        key = dst * E + e[src]
        order = torch.sort(key, stable=True)[1]
        cnt = torch.zeros(W * E, dtype=torch.long).index_add_(0, key.cpu(), torch.ones_like(key.cpu()))
        rcnt = torch.empty_like(cnt)
        dist.all_to_all_single(rcnt, cnt)  # [src, E]: rows of each expert each source sends me
        send_split, recv_split = cnt.view(W, E).sum(1).tolist(), rcnt.view(W, E).sum(1).tolist()
        rows = uf[t[src[order]]]
        recv = _A2A.apply(rows, recv_split, send_split)
        rexp = torch.arange(E).repeat(W).repeat_interleave(rcnt).to(recv.device)
        res = recv * 0  # tied to recv: every rank runs the backward all-to-all, even one holding no expert
        for x in torch.unique(rexp).tolist():
            sel = (rexp == x).nonzero(as_tuple=True)[0]
            w = self.expert(layer, x)
            res = res.index_add(0, sel, ffn(self.cfg.expert_kind, recv[sel], w[0], w[-1], w[1] if len(w) == 3 else None))
        back = _A2A.apply(res, send_split, recv_split)
        out = back.new_zeros((e.numel(),) + tuple(back.shape[1:]))
        return out.index_add(0, src[order], back)  # shards' partial outputs summed per copy
