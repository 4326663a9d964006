"""A disaggregated attention/expert (DEP) forward pass on torch.distributed.

Ranks [0, ag) form the attention group: each holds attention, router and shared experts and
its own samples; ranks [ag, ag + eg) form the expert group: rank ag + e holds the routed
experts [e E/eg, (e+1) E/eg). A forward pass runs layer by layer, micro-batch by
micro-batch (r1 of m_a samples on every attention rank): attention and routing on the
attention rank, then for each of r2 token chunks the A2E transfer of every routed copy
(its row of u, gate weight and local expert id) to the expert rank holding its expert, the
experts there, the E2A transfer of the gated outputs back, and the shared expert; dense
layers stay on the attention group. Transfers are point-to-point in one global order (layer,
micro-batch, chunk, attention rank, expert rank), so no rank waits in a cycle: an attention
rank posts a chunk's A2E to every expert rank at once (``isend``, waited on through the
work handles after the E2A came back), the expert ranks answer with blocking sends. The
output of each attention rank's samples equals
:meth:`executor.layers.ReferenceModel.blocks` (dropless routers; :func:`check_model`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from moesched.errors import MoeschedError
from moesched.findep import DepConfig
from moesched.models import MoEModel
from moesched.work import chunk_range

from executor import routers
from executor.ffn import experts_fwd, grouped
from executor.layers import LayerParams, MoEModule, attention_norm


@dataclass(frozen=True)
class DepRanks:
    """The two groups of a world of ag + eg ranks."""

    ag: int
    eg: int

    def is_attention(self, rank: int) -> bool:
        return rank < self.ag


def check_model(m: MoEModel, ranks: DepRanks, cfg: DepConfig) -> None:
    """One-line MoeschedError for what the DEP executor does not run."""
    if m.capacity_factor is not None:
        raise MoeschedError("DEP inference runs dropless routing only (capacity_factor must be None)")
    if m.router == "expert_choice":
        raise MoeschedError("DEP inference does not run expert_choice routing")
    if m.experts % ranks.eg:
        raise MoeschedError(f"{m.experts} experts do not divide over {ranks.eg} expert ranks")
    if m.micro_batch != cfg.r1 * cfg.m_a:
        raise MoeschedError(f"micro_batch {m.micro_batch} must be r1 x m_a = {cfg.r1} x {cfg.m_a}")
    if cfg.r2 > cfg.m_a * m.seq_len:
        raise MoeschedError(f"r2 = {cfg.r2} chunks exceed the {cfg.m_a * m.seq_len} tokens of a micro-batch")


def build_module(m: MoEModel, ranks: DepRanks, rank: int, seed: int = 0) -> MoEModule:
    """This rank's weights: an expert rank's E/eg experts (and the rest unused), an
    attention rank's attention, router and shared experts (its expert slice unused)."""
    e = 0 if ranks.is_attention(rank) else rank - ranks.ag
    return MoEModule(m, ep=ranks.eg, ep_rank=e, seed=seed, device="cpu", dtype=torch.float32)


def _ffn(m: MoEModel, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor | None) -> torch.Tensor:
    h = x @ w1.t()
    a = F.gelu(h) if m.expert_kind == "gpt" else F.silu(h) * (x @ w3.t())
    return a @ w2.t()


def _send(t: torch.Tensor, dst: int) -> None:
    n = torch.tensor([t.shape[0]], dtype=torch.long)
    dist.send(n, dst)
    if t.shape[0]:
        dist.send(t.contiguous(), dst)


def _isend(t: torch.Tensor, dst: int) -> list[tuple[dist.Work, torch.Tensor]]:
    """Post the row count and the rows of ``t`` to ``dst`` without waiting: (work handle,
    tensor) pairs, the tensor kept alive until its handle is waited on."""
    n = torch.tensor([t.shape[0]], dtype=torch.long)
    out = [(dist.isend(n, dst), n)]
    if t.shape[0]:
        t = t.contiguous()
        out.append((dist.isend(t, dst), t))
    return out


def _recv(src: int, width: int) -> torch.Tensor:
    n = torch.zeros(1, dtype=torch.long)
    dist.recv(n, src)
    t = torch.empty(int(n), width)
    if int(n):
        dist.recv(t, src)
    return t


def attention_task(m: MoEModel, p: LayerParams, x: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, routers.RouterOut]:
    """The DEP attention task of one MoE layer on a micro-batch x [m_a, L, M]: attention and
    norms, then the router; returns (h, u, router output). Priced as ``attn_fwd``."""
    h, u = attention_norm(x, p, m)
    return h, u, routers.route(u, p, m)


def shared_task(m: MoEModel, p: LayerParams, uf: torch.Tensor) -> torch.Tensor:
    """The shared-expert task (or a dense layer's FFN) on tokens uf [T, M]. Priced as ``shared_fwd``."""
    return _ffn(m, uf, p.sw1, p.sw2, p.sw3)


def expert_task(m: MoEModel, p: LayerParams, got: torch.Tensor) -> torch.Tensor:
    """The expert task of an expert rank on the copies received from one attention rank:
    ``got`` [n, M + 2] holds each copy's row, gate weight and local expert id; returns the
    gated expert outputs [n, M]. The copies are sorted by local expert and run as the
    training executor's expert forward (:func:`executor.ffn.experts_fwd`: one grouped GEMM
    per weight in bf16, a loop of GEMMs otherwise). Priced as ``expert_fwd``."""
    M, El = m.d_model, p.w1.shape[0]
    if not got.shape[0]:
        return torch.zeros(0, M, device=got.device, dtype=got.dtype)
    u, g, lid = got[:, :M], got[:, M], got[:, M + 1].long()
    order = torch.argsort(lid, stable=True)
    counts = torch.zeros(El, dtype=torch.long, device=got.device).index_add_(0, lid, torch.ones_like(lid))  # no sync
    x = u.index_select(0, order)
    offs = torch.cumsum(counts, 0).to(torch.int32) if grouped(x) else None
    ne = [] if offs is not None else counts.tolist()  # the grouped path needs no host copy (no sync)
    y, _, _ = experts_fwd(x, ne, offs, p.w1, p.w2, p.w3, p.kind)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=order.device)
    return (y * g.index_select(0, order)[:, None]).index_select(0, inv)  # gated, back in arrival order


def attention_forward(m: MoEModel, mod: MoEModule, ranks: DepRanks, cfg: DepConfig, x: torch.Tensor) -> torch.Tensor:
    """An attention rank's forward of its samples x [r1 m_a, L, M] -> [r1 m_a, L, M]."""
    outs = []
    for i in range(cfg.r1):
        xi = x[i * cfg.m_a:(i + 1) * cfg.m_a]
        for p in mod.blocks:
            xi = _attention_layer(m, p, ranks, cfg, xi)
        outs.append(xi)
    return torch.cat(outs)


def _attention_layer(m: MoEModel, p: LayerParams, ranks: DepRanks, cfg: DepConfig, x: torch.Tensor) -> torch.Tensor:
    b, L, M = x.shape
    T = b * L
    if p.dense:
        h, u = attention_norm(x, p, m)
        return (h.reshape(T, M) + shared_task(m, p, u.reshape(T, M))).view(b, L, M)
    h, u, out = attention_task(m, p, x)
    uf, y = u.reshape(T, M), h.reshape(T, M)
    wf, idf = out.w.reshape(T, -1), out.idx.reshape(T, -1)
    per = m.experts // ranks.eg
    for j in range(cfg.r2):
        lo, hi = chunk_range(T, cfg.r2, j)
        sent, works = [], []
        for e in range(ranks.eg):                                     # A2E: posted to every expert rank at once
            t, s = ((idf[lo:hi] // per) == e).nonzero(as_tuple=True)
            t = t + lo
            lid = (idf[t, s] - e * per).to(uf.dtype)
            works += _isend(torch.cat([uf[t], wf[t, s, None].to(uf.dtype), lid[:, None]], 1), ranks.ag + e)
            sent.append(t)
        for e in range(ranks.eg):                                     # E2A
            got = _recv(ranks.ag + e, M)
            if got.shape[0]:
                y = y.index_add(0, sent[e], got)
        for w, _ in works:                                            # the A2E sends are done by now
            w.wait()
    if p.shared:
        y = y + shared_task(m, p, uf)
    return y.view(b, L, M)


def expert_serve(m: MoEModel, mod: MoEModule, ranks: DepRanks, cfg: DepConfig) -> int:
    """An expert rank's side of the forward pass; returns the copies it computed."""
    M, done = m.d_model, 0
    for _i in range(cfg.r1):
        for p in mod.blocks:
            if p.dense:
                continue
            for _j in range(cfg.r2):
                for a in range(ranks.ag):
                    got = _recv(a, M + 2)
                    _send(expert_task(m, p, got), a)
                    done += got.shape[0]
    return done
