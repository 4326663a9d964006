"""The routing functions of :mod:`moesched.routers` in torch (formulas and papers there).

:func:`route` maps the normed hidden states u [..., M] of a block to a :class:`RouterOut`:
weights w [..., k] (fp32), expert ids idx [..., k] (long), the router probabilities p
[..., E] and logits x [..., E] (fp32, differentiable; for the auxiliary losses). Autograd
differentiates all of it (topk and gather pass gradients to the chosen entries only; the
deepseek_v3 bias and the group mask are constants), so the executor's backward is the
reference's. :func:`expert_choice` is the expert-choice router of the reference; the
executor runs it as E slots per token (:func:`route`) kept by :func:`expert_choice_kept`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moesched import routers
from moesched.models import MoEModel
from moesched.routers import EXECUTOR_ROUTERS  # noqa: F401  (re-exported: what the executor runs)


@dataclass
class RouterOut:
    """w [..., k] fp32 gate weights, idx [..., k] expert ids, probs/logits [..., E] fp32."""

    w: torch.Tensor
    idx: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor


def logits(u: torch.Tensor, p: torch.nn.Module, m: MoEModel) -> torch.Tensor:
    """Router logits [..., E] in fp32: u Wg^T, or for xmoe cos(Wr u, Wg_e) / tau (X-MoE eq. 4)."""
    if m.router == "xmoe":
        z = F.normalize((u @ p.wr.t()).float(), dim=-1)
        return z @ F.normalize(p.wg.float(), dim=-1).t() / p.tau.float()
    return (u @ p.wg.t()).float()


def _norm(w: torch.Tensor, m: MoEModel, eps: float = 0.0) -> torch.Tensor:
    return w / (w.sum(-1, keepdim=True) + eps) if m.norm_topk_prob else w


def group_limited_topk(scores: torch.Tensor, k: int, groups: int, group_topk: int) -> torch.Tensor:
    """Expert ids [..., k] of the k best ``scores`` [..., E] within the ``group_topk`` groups
    (of E/groups consecutive experts) whose two best scores sum highest; other groups are
    excluded (DeepSeek-V3 node-limited routing, as its Hugging Face router)."""
    if groups == 1:
        return scores.topk(k, dim=-1).indices
    E = scores.shape[-1]
    g = scores.view(*scores.shape[:-1], groups, E // groups)
    gscore = g.topk(2, dim=-1).values.sum(-1)                              # [..., groups]
    keep = torch.zeros_like(gscore, dtype=torch.bool).scatter_(-1, gscore.topk(group_topk, dim=-1).indices, True)
    masked = g.masked_fill(~keep.unsqueeze(-1), float("-inf")).reshape(scores.shape)
    return masked.topk(k, dim=-1).indices


def route(u: torch.Tensor, p: torch.nn.Module, m: MoEModel) -> RouterOut:
    """Route u [..., M] with block parameters p (``wg``; xmoe also ``wr``, ``tau``;
    deepseek_v3 the buffer ``e_bias`` [E]) under m.router."""
    x = logits(u, p, m)
    k = m.top_k
    if m.router in routers.SIGMOID_ROUTERS:
        s = torch.sigmoid(x)
        if m.router == "deepseek_v3":
            idx = group_limited_topk(s.detach() + p.e_bias.float(), k, m.router_groups, m.router_group_topk)
            w = _norm(s.gather(-1, idx), m, 1e-20)
        else:
            w, idx = s.topk(k, dim=-1)
            w = _norm(w, m)
        return RouterOut(w, idx, s / s.sum(-1, keepdim=True), x)
    probs = torch.softmax(x, dim=-1)
    if m.router == "expert_choice":  # one slot per expert; expert_choice_kept() picks the kept ones
        idx = torch.arange(m.experts, device=x.device).expand(*x.shape[:-1], m.experts)
        return RouterOut(probs, idx, probs, x)
    w, idx = probs.topk(k, dim=-1)
    return RouterOut(w if m.router == "switch" else _norm(w, m), idx, probs, x)


def expert_choice(u: torch.Tensor, p: torch.nn.Module, m: MoEModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert choice (Zhou et al. 2022, eq. 1): u [T, M] -> gates G [T, E] (S_te where expert
    e chose token t, else 0) and the choice mask [T, E] (bool); each expert chooses
    C = :func:`moesched.routers.expert_choice_capacity` tokens."""
    S = torch.softmax(logits(u, p, m), dim=-1)                               # [T, E]
    mask = expert_choice_kept(S.detach(), routers.expert_choice_capacity(m, S.shape[0]))
    return S * mask, mask


def expert_choice_kept(S: torch.Tensor, capacity: int) -> torch.Tensor:
    """Kept slots [T, E] (bool) of expert choice: expert e keeps its ``capacity`` tokens of
    highest S[:, e] (the same choice as :func:`expert_choice`)."""
    top = S.t().topk(capacity, dim=-1).indices                               # [E, C]
    return torch.zeros_like(S, dtype=torch.bool).scatter_(0, top.t(), True)


def load_balancing_loss(probs: torch.Tensor, idx: torch.Tensor, experts: int) -> torch.Tensor:
    """E * sum_i f_i P_i over the tokens of probs [T, E], idx [T, k]: f_i = copies to expert i
    / T (a constant), P_i = mean_t probs_ti (Switch Transformer eq. 4-6)."""
    T = probs.shape[0]
    f = torch.zeros(experts, device=probs.device).index_add_(0, idx.reshape(-1), torch.ones(
        idx.numel(), device=probs.device)) / T
    return experts * (f * probs.mean(0)).sum()


def z_loss(x: torch.Tensor) -> torch.Tensor:
    """mean_t (logsumexp_j x_tj)^2 over logits x [T, E] (ST-MoE eq. 5)."""
    return (torch.logsumexp(x, dim=-1) ** 2).mean()


def aux_loss(out: RouterOut, m: MoEModel) -> torch.Tensor:
    """alpha * load balancing + beta * z-loss of one layer's routing (flattened tokens)."""
    E = m.experts
    probs, x, idx = out.probs.reshape(-1, E), out.logits.reshape(-1, E), out.idx.reshape(-1, m.top_k)
    total = probs.new_zeros(())
    if m.aux_loss_coef:
        total = total + m.aux_loss_coef * load_balancing_loss(probs, idx, E)
    if m.z_loss_coef:
        total = total + m.z_loss_coef * z_loss(x)
    return total


def piece_aux(out: RouterOut, idx_all: torch.Tensor, m: MoEModel) -> torch.Tensor:
    """A piece's share of :func:`aux_loss` for a rank whose tokens' expert ids are idx_all
    [T, k] (the piece's tokens among them): alpha * E * sum_i f_i * sum_{t in piece} p_ti / T
    + beta * sum_{t in piece} lse_t^2 / T, f_i from idx_all (a constant). Summed over the
    pieces of a layer it is that layer's aux_loss."""
    E, T = m.experts, idx_all.shape[0]
    total = out.probs.new_zeros(())
    if m.aux_loss_coef:
        f = torch.zeros(E, device=idx_all.device).index_add_(0, idx_all.reshape(-1), torch.ones(
            idx_all.numel(), device=idx_all.device)) / T
        total = total + m.aux_loss_coef * E * (f * out.probs.reshape(-1, E).sum(0)).sum() / T
    if m.z_loss_coef:
        total = total + m.z_loss_coef * (torch.logsumexp(out.logits.reshape(-1, E), dim=-1) ** 2).sum() / T
    return total


def has_aux(m: MoEModel) -> bool:
    """Whether the model adds auxiliary router losses."""
    return bool(m.aux_loss_coef or m.z_loss_coef)


@torch.no_grad()
def update_bias(bias: torch.Tensor, load: torch.Tensor, rate: float) -> None:
    """DeepSeek-V3 Sec. 2.1.2: b_i += rate * sign(mean_j load_j - load_i), in place
    (bias, load [E]; load = copies per expert of the whole step)."""
    load = load.to(bias.dtype)
    bias += rate * torch.sign(load.mean() - load)


def expert_counts(idxs: list[torch.Tensor], experts: int, kept: list[torch.Tensor] | None = None) -> torch.Tensor:
    """[layers, E] int64: copies per expert of each layer's expert ids idxs[l] [T, k] (an
    index_add, no host sync); with ``kept`` masks [T, k] only the kept slots (expert choice:
    the slots of every expert, kept where it chose the token); None for a dense layer (a row
    of zeros)."""
    dev = next(i.device for i in idxs if i is not None)
    out = torch.zeros(len(idxs), experts, dtype=torch.long, device=dev)
    for l, idx in enumerate(idxs):
        if idx is None:  # a dense layer: no routing
            continue
        flat = idx.reshape(-1)
        ones = torch.ones_like(flat) if kept is None else kept[l].reshape(-1).long()
        out[l].index_add_(0, flat, ones)
    return out
