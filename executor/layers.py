"""The MoE transformer the executor trains, parameterised by :class:`moesched.models.MoEModel`.

Per block (pre-norm, causal self-attention, RMSNorm, no biases)::

    h = x + Attn(Norm1(x))            Wqkv [(nq + 2 nkv) hd, M], Wo [M, nq hd], causal SDPA
    u = Norm2(h)                      RMSNorm weights [M], eps = model.norm_eps
    p = softmax(u Wg^T)               Wg [E, M]; (w, idx) = topk(p, k); w /= w.sum() (Mixtral;
                                      unless model.norm_topk_prob is False); other routers
                                      (model.router): :mod:`executor.routers`

Attention: nq = heads query heads, nkv = kv_heads key/value heads (grouped-query attention;
nkv = nq by default), head size hd (d_model / heads by default); with ``qk_norm`` an RMSNorm
[hd] over every query and key head (Qwen3); with ``rope_theta`` rotary position embeddings
(positions 0..L-1 of each sample).
    y = h + sum_j w_j Expert_{idx_j}(u) + Shared(u)

Capacity (``capacity_factor`` f set): C = ceil(f*k*T/E), T = tokens of this rank; copies
(token t, slot j) are ranked per expert in token-major order and kept iff rank < C; a
dropped copy contributes 0. Loss of rank r: mean((y_last - target_r)^2); the step's loss is
the mean over ranks.

Parameters per layer: dense (reduced over all ranks) ``norm1, wqkv, wo, norm2, wg`` and, with
shared experts, ``sw1, sw3, sw2`` (hidden shared*H); routed experts stacked ``w1 [El, H, M],
w3 [El, H, M], w2 [El, M, H]`` for the El = E/ep experts [ep_rank*El, (ep_rank+1)*El) of this
rank. Counts match ``MoEModel.dense_params_per_layer()`` and ``expert_params()`` exactly.
A dense layer (``model.dense_layers``) is ``y = h + FFN(u)``: ``norm1, wqkv, wo, norm2`` and
its FFN in ``sw1, sw3, sw2`` (hidden ``dense_ffn_hidden``), all dense (``dense_layer_params()``);
no router, no experts.
Initialisation is deterministic per (seed, layer, name, global expert), so every rank
builds the same dense parameters and the reference model the same experts.
"""
from __future__ import annotations

import math
import zlib
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from moesched.models import MoEModel

from executor import routers

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
RMS_EPS = 1e-6


def _randn(shape: tuple[int, ...], std: float, seed: int, key: str, device: torch.device,
           dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))
    return (torch.randn(shape, generator=g, device=device, dtype=torch.float32) * std).to(dtype)


class LayerParams(nn.Module):
    """Parameters of one block (see the module docstring for names and shapes)."""

    def __init__(self, m: MoEModel, layer: int, ep: int, ep_rank: int, seed: int, device: torch.device,
                 dtype: torch.dtype):
        super().__init__()
        M, H, E = m.d_model, m.ffn_hidden, m.experts
        el = E // ep
        self.kind = m.expert_kind

        def p(name: str, shape: tuple[int, ...], std: float) -> nn.Parameter:
            return nn.Parameter(_randn(shape, std, seed, f"L{layer}/{name}", device, dtype))

        hd, nq, nkv = m.hd, m.heads, m.n_kv_heads
        self.norm1 = nn.Parameter(torch.ones(M, device=device, dtype=dtype))
        self.wqkv = p("wqkv", ((nq + 2 * nkv) * hd, M), 1 / math.sqrt(M))
        self.wo = p("wo", (M, nq * hd), 1 / math.sqrt(nq * hd))
        self.qk_norm = m.qk_norm
        if self.qk_norm:
            self.q_norm = nn.Parameter(torch.ones(hd, device=device, dtype=dtype))
            self.k_norm = nn.Parameter(torch.ones(hd, device=device, dtype=dtype))
        self.norm2 = nn.Parameter(torch.ones(M, device=device, dtype=dtype))
        self.dense = m.is_dense(layer)
        if self.dense:  # attention + one dense FFN in sw1, (sw3), sw2: no router, no experts
            self._ffn_params(p, m.dense_ffn_hidden, M)
            self.xmoe, self.w1, self.w3, self.w2 = False, None, None, None
            return
        self.xmoe = m.router == "xmoe"
        if self.xmoe:  # X-MoE: Wr [d_r, M], expert embeddings Wg [E, d_r], temperature tau
            self.wr = p("wr", (m.router_dim, M), 1 / math.sqrt(M))
            self.wg = p("wg", (E, m.router_dim), 1 / math.sqrt(m.router_dim))
            self.tau = nn.Parameter(torch.full((1,), 0.07, device=device, dtype=dtype))
        else:
            self.wg = p("wg", (E, M), 1 / math.sqrt(M))
        if m.router == "deepseek_v3":  # selection bias, updated from the load (not a parameter)
            self.register_buffer("e_bias", torch.zeros(E, device=device, dtype=torch.float32))
        self.shared = m.shared_experts > 0
        if self.shared:
            self._ffn_params(p, m.shared_experts * H, M)

        def ex(name: str, shape: tuple[int, ...], std: float) -> nn.Parameter:
            return nn.Parameter(torch.stack([_randn(shape, std, seed, f"L{layer}/{name}/e{ep_rank * el + e}",
                                                    device, dtype) for e in range(el)]))

        self.w1 = ex("w1", (H, M), 1 / math.sqrt(M))
        self.w3 = ex("w3", (H, M), 1 / math.sqrt(M)) if self.kind == "swiglu" else None
        self.w2 = ex("w2", (M, H), 1 / math.sqrt(H))

    def _ffn_params(self, p: "Callable[[str, tuple[int, ...], float], nn.Parameter]", hid: int, M: int) -> None:
        """The FFN on every token (shared experts, or a dense layer's FFN) of hidden ``hid``."""
        self.shared = True
        self.sw1 = p("sw1", (hid, M), 1 / math.sqrt(M))
        self.sw3 = p("sw3", (hid, M), 1 / math.sqrt(M)) if self.kind == "swiglu" else None
        self.sw2 = p("sw2", (M, hid), 1 / math.sqrt(hid))

    def attention_params(self) -> list[nn.Parameter]:
        """Parameters of the attention and router part: norm1, wqkv, wo, [q_norm, k_norm], norm2, wg,
        [wr, tau] (xmoe); a dense layer has no wg."""
        qk = [self.q_norm, self.k_norm] if self.qk_norm else []
        xm = [self.wr, self.tau] if self.xmoe else []
        return [self.norm1, self.wqkv, self.wo, *qk, self.norm2, *([] if self.dense else [self.wg]), *xm]

    def dense_params(self) -> list[nn.Parameter]:
        """Fixed order: attention_params(), then [sw1, (sw3), sw2]."""
        ps = self.attention_params()
        if self.shared:
            ps += [self.sw1] + ([self.sw3] if self.sw3 is not None else []) + [self.sw2]
        return ps

    def expert_params(self) -> list[nn.Parameter]:
        """Fixed order: w1, (w3), w2 (each stacked over local experts); none in a dense layer."""
        if self.dense:
            return []
        return [self.w1] + ([self.w3] if self.w3 is not None else []) + [self.w2]


class MoEModule(nn.Module):
    """All blocks of one rank. ``ep``/``ep_rank`` select the routed experts held here."""

    def __init__(self, m: MoEModel, ep: int = 1, ep_rank: int = 0, seed: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
        super().__init__()
        if m.experts % ep:
            raise ValueError(f"experts={m.experts} not divisible by ep={ep}")
        self.cfg, self.ep, self.ep_rank = m, ep, ep_rank
        self.device = torch.device(device)
        self.dtype = dtype or TORCH_DTYPES[m.dtype]
        self.blocks = nn.ModuleList(LayerParams(m, l, ep, ep_rank, seed, self.device, self.dtype)
                                    for l in range(m.layers))


def grad_buffers(module: MoEModule) -> dict[str, torch.Tensor]:
    """Flat gradient buffers, layers LAST first, parameters in LayerParams order; every
    parameter's .grad becomes a view into them. Returns {"dense": ..., "expert": ...}."""
    out = {}
    blocks = list(module.blocks)[::-1]
    for name, get in (("dense", lambda b: b.dense_params()), ("expert", lambda b: b.expert_params())):
        ps = [p for blk in blocks for p in get(blk)]
        flat = torch.zeros(sum(p.numel() for p in ps), device=module.device, dtype=module.dtype)
        o = 0
        for p in ps:
            p.grad = flat[o:o + p.numel()].view_as(p)
            o += p.numel()
        out[name] = flat
    return out


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float = RMS_EPS) -> torch.Tensor:
    """x [..., M] * rsqrt(mean(x^2) + eps) * w: torch's fused RMSNorm (one autograd node
    instead of seven: the attention backward is launch-bound at these sizes)."""
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding of x [b, heads, L, hd] at positions 0..L-1 (the
    rotate-half form of Llama/Mixtral/Qwen: cos/sin of pos * theta^(-2i/hd), fp32)."""
    L, hd = x.shape[-2], x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device=x.device).float() / hd))
    freqs = torch.arange(L, device=x.device, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def attention_router(x: torch.Tensor, p: LayerParams, m: MoEModel
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Differentiable part of a block for whole samples.

    x [b, L, M] -> h [b, L, M], u [b, L, M], w [b, L, k] (fp32 router weights, renormalised),
    idx [b, L, k] (expert ids, long).
    """
    h, u, out = attention_router_out(x, p, m)
    return h, u, out.w, out.idx


def attention_norm(x: torch.Tensor, p: LayerParams, m: MoEModel) -> tuple[torch.Tensor, torch.Tensor]:
    """x [b, L, M] -> h = x + Attn(Norm1(x)), u = Norm2(h) [b, L, M]."""
    b, L, M = x.shape
    hd, nq, nkv = m.hd, m.heads, m.n_kv_heads
    qkv = rmsnorm(x, p.norm1, m.norm_eps) @ p.wqkv.t()
    q, k, v = qkv.split([nq * hd, nkv * hd, nkv * hd], dim=-1)
    q, k, v = q.view(b, L, nq, hd), k.view(b, L, nkv, hd), v.view(b, L, nkv, hd)
    if m.qk_norm:
        q, k = rmsnorm(q, p.q_norm, m.norm_eps), rmsnorm(k, p.k_norm, m.norm_eps)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if m.rope_theta is not None:
        q, k = rope(q, m.rope_theta), rope(k, m.rope_theta)
    if nkv != nq:  # grouped-query attention: kv head j serves query heads [j*g, (j+1)*g)
        k, v = k.repeat_interleave(nq // nkv, dim=1), v.repeat_interleave(nq // nkv, dim=1)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    h = x + a.transpose(1, 2).reshape(b, L, nq * hd) @ p.wo.t()
    return h, rmsnorm(h, p.norm2, m.norm_eps)


def attention_router_out(x: torch.Tensor, p: LayerParams, m: MoEModel
                         ) -> tuple[torch.Tensor, torch.Tensor, routers.RouterOut]:
    """:func:`attention_router` with the router's whole output (probabilities and logits for
    the auxiliary losses)."""
    h, u = attention_norm(x, p, m)
    return h, u, routers.route(u, p, m)


def capacity(m: MoEModel, tokens: int) -> int | None:
    """Slots per expert from one rank, C = ceil(f*k*T/E) (GShard), or None when dropless."""
    if m.capacity_factor is None:
        return None
    return math.ceil(m.capacity_factor * m.top_k * tokens / m.experts)


def keep_mask(idx: torch.Tensor, experts: int, cap: int | None, counts: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Kept copies of tokens idx [n, k] (token-major rank per expert < cap).

    counts [E] (long): copies per expert already ranked by earlier tokens; updated in place.
    """
    if cap is None:
        if counts is not None:
            counts.index_add_(0, idx.reshape(-1), torch.ones_like(idx.reshape(-1)))  # bincount would sync
        return torch.ones_like(idx, dtype=torch.bool)
    flat = idx.reshape(-1)
    tot = torch.zeros(experts, dtype=torch.long, device=idx.device).index_add_(0, flat, torch.ones_like(flat))
    # rank within its expert = position in the stable sort by expert - start of the expert's
    # block (a cumsum over a one-hot [n, E] is ~1.4 ms on an H100 at n = 8192: avoided)
    order = torch.sort(flat, stable=True)[1]
    pos = torch.empty_like(order).scatter_(0, order, torch.arange(flat.numel(), device=idx.device))
    rank = pos - (torch.cumsum(tot, 0) - tot)[flat]
    if counts is not None:
        rank += counts[flat]
        counts += tot
    return (rank < cap).view_as(idx)


class ReferenceModel:
    """Plain single-process model with all experts: the mean over ranks of the per-rank
    losses, differentiated by autograd (experts via F.gelu / F.silu, not the executor's
    hand-written backward)."""

    def __init__(self, m: MoEModel, seed: int = 0, dtype: torch.dtype = torch.float32,
                 init_device: torch.device | str = "cpu", module: MoEModule | None = None):
        """module: an existing CPU module with all experts to use (default: built here)."""
        self.cfg = m
        if module is None:
            module = MoEModule(m, ep=1, ep_rank=0, seed=seed, device=init_device, dtype=dtype).to("cpu")
            module.device = torch.device("cpu")
        self.module = module

    def _ffn(self, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor | None) -> torch.Tensor:
        h = x @ w1.t()
        a = F.gelu(h) if self.cfg.expert_kind == "gpt" else F.silu(h) * (x @ w3.t())
        return a @ w2.t()

    def rank_loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of one rank's batch x, target [B, L, M]: the mean squared error plus the
        router's auxiliary losses (:attr:`aux`)."""
        x = self.blocks(x)
        return ((x.float() - target.float()) ** 2).mean() + self.aux

    def blocks(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Output [B, L, M] of block ``stop - 1`` for input x [B, L, M] of block ``start``
        (default: every block). Sets ``self.aux`` (the auxiliary router losses averaged over
        layers, 0-d) and ``self.load`` [layers, E] (copies routed to each expert, before
        capacity)."""
        m = self.cfg
        B, L, M = x.shape
        T = B * L
        self.aux = x.new_zeros((), dtype=torch.float32)
        self.load = torch.zeros(m.layers, m.experts, dtype=torch.long)
        for l, p in enumerate(self.module.blocks):
            if l < start or (stop is not None and l >= stop):
                continue
            h, u = attention_norm(x, p, m)
            uf = u.reshape(T, M)
            y = h.reshape(T, M)
            if p.dense:
                x = (y + self._ffn(uf, p.sw1, p.sw2, p.sw3)).view(B, L, M)
                continue
            if m.router == "expert_choice":
                gate, chosen = routers.expert_choice(uf, p, m)
                t_e = [(chosen[:, e].nonzero(as_tuple=True)[0], gate[:, e]) for e in range(m.experts)]
                self.load[l] = chosen.sum(0).cpu()
            else:
                out = routers.route(u, p, m)
                wf, idf = out.w.reshape(T, -1), out.idx.reshape(T, -1)
                kept = keep_mask(idf, m.experts, capacity(m, T))
                self.load[l] = torch.bincount(idf.reshape(-1).cpu(), minlength=m.experts)
                if routers.has_aux(m):
                    self.aux = self.aux + routers.aux_loss(out, m) / m.layers
                t_e = []
                for e in range(m.experts):
                    t, j = ((idf == e) & kept).nonzero(as_tuple=True)
                    t_e.append((t, torch.zeros(T, dtype=wf.dtype, device=wf.device).index_put((t,), wf[t, j])))
            for e, (t, g) in enumerate(t_e):
                if t.numel():
                    out_e = self._ffn(uf[t], p.w1[e], p.w2[e], None if p.w3 is None else p.w3[e])
                    y = y.index_add(0, t, (g[t, None] * out_e).to(y.dtype))
            if p.shared:
                y = y + self._ffn(uf, p.sw1, p.sw2, p.sw3)
            x = y.view(B, L, M)
        return x

    def loss(self, xs: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
        """Mean over ranks of rank_loss; ``self.step_load`` [layers, E]: copies per expert over
        all ranks (what :meth:`update_bias` uses)."""
        total, load = 0.0, 0
        for x, t in zip(xs, targets):
            total = total + self.rank_loss(x, t)
            load = load + self.load
        self.step_load = load
        return total / len(xs)

    def update_bias(self) -> None:
        """deepseek_v3: every block's selection bias from ``step_load`` (DeepSeek-V3 Sec. 2.1.2)."""
        for p, ld in zip(self.module.blocks, self.step_load):
            if p.dense:
                continue
            routers.update_bias(p.e_bias, ld, self.cfg.bias_update_rate)


def make_batch(m: MoEModel, rank: int, seed: int = 0, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic synthetic (x, target) [B, L, M] for a rank."""
    shape = (m.micro_batch, m.seq_len, m.d_model)
    dev = torch.device(device)
    return (_randn(shape, 1.0, seed, f"x/{rank}", dev, dtype), _randn(shape, 1.0, seed, f"t/{rank}", dev, dtype))
