"""Routing functions of an MoE layer: names, their settings' checks, and their parameters.

The torch implementation (exact forward and backward) is :mod:`executor.routers`; this
module is what the pure-Python side needs. For router logits x = u Wg^T (u [T, M], Wg [E, M]):

* ``topk_softmax`` (GShard, Lepikhin et al. 2020; Mixtral): p = softmax(x); (w, idx) =
  topk(p, k); w /= sum(w) when ``norm_topk_prob``.
* ``switch`` (Switch Transformer, Fedus et al. 2021, Sec. 2.1 eq. 1-2): k = 1,
  p = softmax(x), the expert output is scaled by its gate probability p_idx (never
  renormalised, which would make it 1).
* ``sigmoid``: s = sigmoid(x); (w, idx) = topk(s, k); w /= sum(w) when ``norm_topk_prob``
  (FSMoE's "Sigmoid" gate; DeepSeek-V3 eq. 15 without the bias).
* ``deepseek_v3`` (DeepSeek-V3 report, Liu et al. 2024, Sec. 2.1.2 eq. 12-16): s = sigmoid(x);
  the selection uses s + b (b [E]: a bias that is not a parameter); experts form
  ``router_groups`` groups of E/G, a group's score is the sum of its two best s + b, the
  ``router_group_topk`` best groups are kept (node-limited routing), idx = topk over them,
  w = s_idx (the bias does not enter w), normalised when ``norm_topk_prob``. After every
  step b_i += gamma * sign(mean_j load_j - load_i) (auxiliary-loss-free balancing; gamma =
  ``bias_update_rate``; load = copies of the whole step, all ranks).
* ``expert_choice`` (Zhou et al. 2022, Sec. 3.1 eq. 1): S = softmax(x) [T, E]; each expert
  takes its C = ceil(f k T / E) best tokens (f = capacity_factor, 1 when unset), gates
  G = S at the chosen (token, expert) pairs; a token may get 0..E experts. The executor
  gives every token E slots (slot e = expert e, kept where e chose the token) and needs
  unchunked attention (an expert chooses among all of a rank's tokens at once).
* ``xmoe`` (X-MoE, Chi et al. 2022, Sec. 3 eq. 4-5): a low-dimensional projection
  Wr [d_r, M], expert embeddings Wg [E, d_r], a learned temperature tau:
  x_e = cos(Wr u, Wg_e) / tau, then softmax and top-k as ``topk_softmax``.

Auxiliary losses (added to each rank's loss, averaged over layers; 0 = off):

* load balancing, coefficient ``aux_loss_coef`` = alpha (Switch eq. 4-6, GShard l_aux):
  alpha * E * sum_i f_i * P_i, f_i = copies routed to expert i / T (over the k slots, as
  Hugging Face's Mixtral), P_i = mean over tokens of the router probability p_i
  (sigmoid routers: s_i / sum_j s_j).
* router z-loss, coefficient ``z_loss_coef`` = beta (ST-MoE, Zoph et al. 2022, eq. 5):
  beta * mean_t (logsumexp_j x_tj)^2.
"""
from __future__ import annotations

import math
from typing import Any

from moesched.errors import MoeschedError

MoEModel = Any  # a moesched.models.MoEModel (which imports this module: no import back)

ROUTERS = ("topk_softmax", "switch", "sigmoid", "deepseek_v3", "expert_choice", "xmoe")
#: routers whose scores are sigmoids (their load-balancing P_i is the normalised score)
SIGMOID_ROUTERS = ("sigmoid", "deepseek_v3")
#: routers the executor runs (all; expert_choice with one slot per expert, unchunked attention)
EXECUTOR_ROUTERS = ROUTERS


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check(m: MoEModel) -> None:
    """Raise MoeschedError unless the router fields of ``m`` are consistent."""
    if m.router not in ROUTERS:
        raise MoeschedError(f"model {m.name}: router must be one of {ROUTERS}, got {m.router!r}")
    for f in ("aux_loss_coef", "z_loss_coef", "bias_update_rate"):
        v = getattr(m, f)
        if not _number(v) or v < 0:
            raise MoeschedError(f"model {m.name}: {f} must be a finite number >= 0, got {v!r}")
    for f in ("router_groups", "router_group_topk", "router_dim"):
        v = getattr(m, f)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise MoeschedError(f"model {m.name}: {f} must be a positive integer, got {v!r}")
    if m.router == "switch" and m.top_k != 1:
        raise MoeschedError(f"model {m.name}: the switch router is top-1, got top_k={m.top_k}")
    if m.router == "deepseek_v3":
        g, tg = m.router_groups, m.router_group_topk
        if m.experts % g or m.experts // g < 2:
            raise MoeschedError(f"model {m.name}: router_groups={g} must divide experts={m.experts} "
                                f"into groups of at least 2")
        if tg > g or tg * (m.experts // g) < m.top_k:
            raise MoeschedError(f"model {m.name}: router_group_topk={tg} groups of {m.experts // g} experts "
                                f"cannot hold top_k={m.top_k} (and at most router_groups={g})")
    elif (m.router_groups, m.router_group_topk) != (1, 1):
        raise MoeschedError(f"model {m.name}: router_groups/router_group_topk are for deepseek_v3 only")


def slots(m: MoEModel) -> int:
    """Copy slots per token in the executor's buffers: top_k; expert_choice E (slot e = expert
    e, kept where expert e chose the token)."""
    return m.experts if m.router == "expert_choice" else m.top_k


def router_params(m: MoEModel) -> int:
    """Router parameters of one layer: Wg [E, M] (M*E), or for xmoe Wr [d_r, M], Wg [E, d_r]
    and tau (d_r*M + E*d_r + 1)."""
    if m.router == "xmoe":
        return m.router_dim * m.d_model + m.experts * m.router_dim + 1
    return m.d_model * m.experts


def expert_choice_capacity(m: MoEModel, tokens: int) -> int:
    """Tokens each expert takes under expert choice: C = ceil(f k T / E) (Zhou et al. 2022,
    Sec. 3.1, k = capacity per token, f = capacity_factor or 1), at most T."""
    f = 1.0 if m.capacity_factor is None else m.capacity_factor
    return min(tokens, math.ceil(f * m.top_k * tokens / m.experts))
