"""Dense (non-MoE) layers of a :class:`moesched.models.MoEModel` (``dense_layers``): sizes,
work and gradients. Torch-free.

A dense layer is attention + two norms + one dense FFN of the model's expert kind (SwiGLU
or GPT) and hidden ``dense_ffn_hidden`` on every token: no router, no experts, no
all-to-all (DeepSeek-V2/V3's first ``first_k_dense_replace`` layers, Qwen2/3-MoE's
``mlp_only_layers``). In the task graph its FFN is a ``shared_fwd`` / ``shared_bwd`` task
(:mod:`moesched.kinds`: a shared expert is the same thing, an FFN applied to every local
token with plain GEMMs) priced as the FFN of :func:`ffn_view`; its attention task is an
MoE layer's (whose router GEMM, 2*M*E FLOPs per token, it counts too: 0.4% of
DeepSeek-V2-Lite's attention FLOPs at L=4096). All its parameters join the dense
all-reduce; it has no expert gradients.
"""
from __future__ import annotations

from dataclasses import replace

from moesched.models import MoEModel


def ffn_view(m: MoEModel) -> MoEModel:
    """A model whose one shared expert is ``m``'s dense FFN (hidden ``dense_ffn_hidden``):
    the shape a profile prices the dense FFN tasks with (its shape key names H_dense)."""
    assert m.dense_ffn_hidden is not None
    return replace(m, shared_experts=1, ffn_hidden=m.dense_ffn_hidden, dense_layers=(), dense_ffn_hidden=None)


def moe_part(m: MoEModel) -> MoEModel:
    """``m`` with its MoE layers only (the dense layers removed): what expert placement and
    routing work on; a dense layer costs the same under every placement."""
    if not m.dense_layers:
        return m
    return replace(m, layers=len(m.moe_layers), dense_layers=(), dense_ffn_hidden=None)


def ffn_fwd_flops(m: MoEModel, tokens: int) -> float:
    """Forward FLOPs of the dense FFN on ``tokens`` tokens: (2 or 3) GEMMs of 2*M*H_dense
    FLOPs per token (backward: 2x, Narayanan et al. SC'21 Sec. 5.1)."""
    return tokens * 2.0 * m.dense_ffn_params()


def grad_bytes_per_layer(m: MoEModel, group: str, ep: int) -> list[int]:
    """Gradient bytes of each layer (index order) in gradient group ``group``: "dense"
    (MoE layer: :meth:`MoEModel.dense_params_per_layer`; dense layer:
    :meth:`MoEModel.dense_layer_params`) or "expert" (MoE layer: its E/ep experts; dense
    layer: 0)."""
    b = m.bytes_per_elem
    if group == "dense":
        return [(m.dense_layer_params() if m.is_dense(l) else m.dense_params_per_layer()) * b
                for l in range(m.layers)]
    return [0 if m.is_dense(l) else (m.experts // ep) * m.expert_params() * b for l in range(m.layers)]


def param_counts(m: MoEModel, ep: int) -> tuple[int, int]:
    """(dense, expert) parameters held by one rank with EP size ``ep``: every layer's dense
    parameters (dense layers whole) and the token embedding, output head and final norm
    (:meth:`MoEModel.embedding_params`), the E/ep experts of each MoE layer."""
    nd = len(m.dense_layers)
    dense = (m.layers - nd) * m.dense_params_per_layer() + nd * m.dense_layer_params() + m.embedding_params()
    return dense, (m.layers - nd) * (m.experts // ep) * m.expert_params()


def attention_activation_bytes(m: MoEModel) -> int:
    """Bytes the attention of one layer keeps for its backward on one rank (Korthikanti et
    al. Eq. 1 counted for this block, no dropout, SDPA; b bytes per element, T tokens, M
    width, h heads of size d, h_kv key/value heads): input, norm output, h, u: 4 [T, M];
    q, SDPA output and its re-laid copy: 3 [T, h*d]; k, v: 2 [T, h_kv*d], and their
    copies repeated to every query head 2 [T, h*d] under grouped-query attention; SDPA
    log-sum-exp [T, h] and norm rstd 2 [T] fp32. Without grouped-query attention and
    head_dim: 9 [T, M]."""
    b, T, M, hq, hkv = m.bytes_per_elem, m.tokens, m.d_model, m.heads * m.hd, m.n_kv_heads * m.hd
    rep = 2 * T * hq if m.n_kv_heads != m.heads else 0
    return (4 * T * M + 3 * T * hq + 2 * T * hkv + rep) * b + 4 * (T * m.heads + 2 * T)


def activation_bytes(m: MoEModel) -> int:
    """Bytes one dense layer keeps for its backward on one rank (b bytes per element, T
    tokens, M width, H_dense): the attention's (:func:`attention_activation_bytes`), the
    FFN input [T, M] and pre-activations [T, H_dense] (two for SwiGLU), and the layer
    output's gradient [T, M]."""
    b, T, M = m.bytes_per_elem, m.tokens, m.d_model
    hid = (m.expert_gemms - 1) * T * (m.dense_ffn_hidden or 0)
    return attention_activation_bytes(m) + (2 * T * M + hid) * b
