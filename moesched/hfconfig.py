"""A :class:`moesched.models.MoEModel` from a Hugging Face ``config.json`` (Mixtral, Qwen3-MoE).

Read fields (``model_type`` "mixtral" or "qwen3_moe"): num_hidden_layers, hidden_size,
num_attention_heads, num_key_value_heads, head_dim, intermediate_size (Mixtral) or
moe_intermediate_size (Qwen3-MoE), num_local_experts / num_experts, num_experts_per_tok,
rms_norm_eps, rope_theta (or rope_parameters.rope_theta), norm_topk_prob (Qwen3-MoE;
Mixtral always renormalises), vocab_size, tie_word_embeddings; dense (non-MoE) layers
(:func:`dense_fields`): Qwen2/3-MoE ``mlp_only_layers`` and ``decoder_sparse_step``,
DeepSeek-V2/V3 ``first_k_dense_replace`` and ``moe_layer_freq``, their FFN hidden size
``intermediate_size``. Qwen3-MoE has an RMSNorm per
query and key head (``qk_norm``). The config holds no sequence length or batch: they are
arguments. Architecture details the executor does not implement are refused with one
line: multi-head latent attention (DeepSeek-V2/V3), Qwen2-MoE's gated shared expert and
attention biases, sliding-window attention, scaled rotary
embeddings, activations other than SiLU.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from moesched.errors import MoeschedError
from moesched.limits import MAX_LAYERS

SUPPORTED = ("mixtral", "qwen3_moe")
_REFUSED = {
    "deepseek_v2": "multi-head latent attention (DeepSeek-V2) is not supported",
    "deepseek_v3": "multi-head latent attention (DeepSeek-V3) is not supported",
    "qwen2_moe": "Qwen2-MoE's gated shared expert and attention biases are not supported",
}


def read_config(path_or_dict: str | os.PathLike | dict) -> dict[str, Any]:
    """The config as a dict: a dict as is, a config.json, or a folder holding one."""
    if isinstance(path_or_dict, dict):
        return path_or_dict
    path = os.fspath(path_or_dict)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except OSError as e:
        raise MoeschedError(f"cannot read Hugging Face config {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MoeschedError(f"{path} is not a JSON config: {e}") from None
    if not isinstance(d, dict):
        raise MoeschedError(f"{path} is not a JSON object")
    return d


def _get(d: dict, *keys: str) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    raise MoeschedError(f"Hugging Face config of {d.get('model_type')!r} has no {' or '.join(keys)}")


def _rope_theta(d: dict) -> float:
    rp = d.get("rope_parameters") or d.get("rope_scaling") or {}
    kind = rp.get("rope_type", rp.get("type", "default")) if isinstance(rp, dict) else "default"
    if kind != "default":
        raise MoeschedError(f"rotary embeddings of type {kind!r} are not supported (only the default)")
    theta = rp.get("rope_theta") if isinstance(rp, dict) else None
    return _real(theta if theta is not None else d.get("rope_theta", 10000.0), "rope_theta")


def _real(v: Any, key: str) -> float:
    """``v`` as a float; a string, list or non-finite number is one line naming ``key``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise MoeschedError(f"Hugging Face config: {key} must be a finite number, got {v!r:.40}")
    return float(v)


def _refuse_unsupported(d: dict, mt: str) -> None:
    if mt in _REFUSED:
        raise MoeschedError(f"model_type {mt!r}: {_REFUSED[mt]}")
    if mt not in SUPPORTED:
        raise MoeschedError(f"model_type {mt!r} is not supported; supported: {', '.join(SUPPORTED)}")
    if d.get("hidden_act", "silu") != "silu":
        raise MoeschedError(f"hidden_act {d.get('hidden_act')!r} is not supported (SwiGLU experts use silu)")
    if d.get("sliding_window") is not None and d.get("use_sliding_window", True):
        raise MoeschedError("sliding-window attention is not supported")
    if d.get("attention_bias"):
        raise MoeschedError("attention biases are not supported")


def _int(d: dict, key: str, default: int) -> int:
    v = d.get(key, default)
    v = default if v is None else v
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise MoeschedError(f"Hugging Face config: {key} must be an integer >= 0, got {v!r}")
    return v


def dense_fields(d: dict) -> dict[str, Any]:
    """``dense_layers`` and ``dense_ffn_hidden`` of a config, as its modelling code decides
    which layers are MoE (transformers' ``modeling_qwen3_moe`` / ``modeling_deepseek_v3``):

    * Qwen2/3-MoE: layer i is MoE iff i is not in ``mlp_only_layers``, ``num_experts`` > 0
      and (i + 1) % ``decoder_sparse_step`` == 0;
    * DeepSeek-V2/V3: layer i is MoE iff ``n_routed_experts`` is set, i >=
      ``first_k_dense_replace`` and i % ``moe_layer_freq`` == 0;
    * Mixtral: every layer is MoE.

    A dense layer's FFN is SwiGLU of hidden ``intermediate_size``."""
    mt, L = d.get("model_type"), _get(d, "num_hidden_layers")
    if isinstance(L, bool) or not isinstance(L, int) or not 0 < L <= MAX_LAYERS:
        raise MoeschedError(f"Hugging Face config: num_hidden_layers must be an integer in [1, {MAX_LAYERS}], "
                            f"got {L!r:.40}")
    if mt in ("qwen2_moe", "qwen3_moe"):
        only = d.get("mlp_only_layers")
        only = [] if only is None else only
        if not isinstance(only, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in only):
            raise MoeschedError(f"Hugging Face config: mlp_only_layers must be a list of integers, got {only!r}")
        step = _int(d, "decoder_sparse_step", 1) or 1
        moe = [i not in only and _int(d, "num_experts", 1) > 0 and (i + 1) % step == 0 for i in range(L)]
    elif mt in ("deepseek_v2", "deepseek_v3"):
        k, freq = _int(d, "first_k_dense_replace", 0), _int(d, "moe_layer_freq", 1) or 1
        moe = [d.get("n_routed_experts") is not None and i >= k and i % freq == 0 for i in range(L)]
    else:
        moe = [True] * L
    dense = tuple(i for i in range(L) if not moe[i])
    return dict(dense_layers=dense, dense_ffn_hidden=_get(d, "intermediate_size") if dense else None)


def model_kwargs(path_or_dict: str | os.PathLike | dict) -> dict[str, Any]:
    """MoEModel fields from the config (all but name, seq_len, micro_batch, dtype)."""
    d = read_config(path_or_dict)
    mt = d.get("model_type")
    _refuse_unsupported(d, mt)
    M, heads = _get(d, "hidden_size"), _get(d, "num_attention_heads")
    kv = d.get("num_key_value_heads") or heads
    hd = d.get("head_dim")
    return dict(
        layers=_get(d, "num_hidden_layers"), d_model=M, heads=heads,
        ffn_hidden=_get(d, "intermediate_size") if mt == "mixtral" else _get(d, "moe_intermediate_size"),
        experts=_get(d, "num_local_experts", "num_experts"), top_k=_get(d, "num_experts_per_tok"),
        expert_kind="swiglu", kv_heads=None if kv == heads else kv,
        head_dim=None if hd is None or hd * heads == M else hd, rope_theta=_rope_theta(d),
        norm_eps=_real(_get(d, "rms_norm_eps"), "rms_norm_eps"), qk_norm=mt == "qwen3_moe",
        norm_topk_prob=True if mt == "mixtral" else bool(d.get("norm_topk_prob", False)),
        vocab_size=_get(d, "vocab_size"), tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        **dense_fields(d))
