"""A :class:`moesched.models.MoEModel` from a Hugging Face ``config.json`` (Mixtral, Qwen3-MoE).

Read fields (``model_type`` "mixtral" or "qwen3_moe"): num_hidden_layers, hidden_size,
num_attention_heads, num_key_value_heads, head_dim, intermediate_size (Mixtral) or
moe_intermediate_size (Qwen3-MoE), num_local_experts / num_experts, num_experts_per_tok,
rms_norm_eps, rope_theta (or rope_parameters.rope_theta), norm_topk_prob (Qwen3-MoE;
Mixtral always renormalises), vocab_size, tie_word_embeddings. Qwen3-MoE has an RMSNorm per
query and key head (``qk_norm``). The config holds no sequence length or batch: they are
arguments. Architecture details the executor does not implement are refused with one
line: multi-head latent attention (DeepSeek-V2/V3), Qwen2-MoE's gated shared expert and
attention biases, dense (non-MoE) layers, sliding-window attention, scaled rotary
embeddings, activations other than SiLU.
"""
from __future__ import annotations

import json
import os
from typing import Any

from moesched.errors import MoeschedError

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
    return float(theta if theta is not None else d.get("rope_theta", 10000.0))


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
    if mt == "qwen3_moe" and (d.get("mlp_only_layers") or d.get("decoder_sparse_step", 1) != 1):
        raise MoeschedError("dense (non-MoE) layers (mlp_only_layers, decoder_sparse_step) are not supported")


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
        norm_eps=float(_get(d, "rms_norm_eps")), qk_norm=mt == "qwen3_moe",
        norm_topk_prob=True if mt == "mixtral" else bool(d.get("norm_topk_prob", False)),
        vocab_size=_get(d, "vocab_size"), tie_embeddings=bool(d.get("tie_word_embeddings", False)))
