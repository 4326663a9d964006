"""MoEModel's attention and language-model fields: validation, the dict (left out at their
defaults, so existing plans keep their hash), parameter counts matching the executor's."""
from __future__ import annotations

import pytest
import torch

from moesched.errors import MoeschedError
from moesched.models import PRESETS, MoEModel

from executor.layers import LayerParams
from executor.testplans import tiny_model


PUBLISHED = {"Mixtral-8x7B", "Mixtral-8x22B", "DeepSeek-V2-Lite", "Qwen3-30B-A3B"}  # tests/test_presets.py


def test_defaults_leave_the_dict_unchanged():
    """The papers' shapes set no attention or language-model field: their dicts (and plan
    hashes) are what they were without these fields."""
    for m in (p for name, p in PRESETS.items() if name not in PUBLISHED):
        assert set(m.to_dict()) == {"name", "layers", "d_model", "heads", "seq_len", "micro_batch", "ffn_hidden",
                                    "experts", "top_k", "capacity_factor", "shared_experts", "expert_kind", "router",
                                    "dtype"}
        assert m.dense_params_per_layer() == 4 * m.d_model ** 2 + 2 * m.d_model + m.d_model * m.experts + \
            m.shared_experts * m.expert_params()


def test_fields_round_trip_and_unknown_keys_refused():
    m = tiny_model(kv_heads=1, head_dim=6, rope_theta=1e6, norm_eps=1e-5, qk_norm=True, norm_topk_prob=False,
                   vocab_size=99, tie_embeddings=True)
    d = m.to_dict()
    assert d["kv_heads"] == 1 and d["vocab_size"] == 99 and MoEModel.from_dict(d) == m
    with pytest.raises(MoeschedError, match="unknown"):
        MoEModel.from_dict({**d, "kv_head": 2})
    with pytest.raises(MoeschedError, match="missing"):
        MoEModel.from_dict({k: v for k, v in d.items() if k != "heads"})


@pytest.mark.parametrize("kw, words", [
    ({"kv_heads": 3}, "not divisible by kv_heads=3"),
    ({"kv_heads": 0}, "kv_heads must be a positive integer"),
    ({"head_dim": 5, "rope_theta": 1e4}, "even head size"),
    ({"rope_theta": -1.0}, "rope_theta must be a positive number"),
    ({"norm_eps": 0}, "norm_eps"),
    ({"qk_norm": 1}, "qk_norm must be true or false"),
    ({"tie_embeddings": True}, "tie_embeddings needs vocab_size"),
    ({"vocab_size": True}, "vocab_size must be a positive integer"),
])
def test_bad_fields_refused(kw, words):
    with pytest.raises(MoeschedError, match=words):
        tiny_model(**kw)


@pytest.mark.parametrize("kw", [{}, {"kv_heads": 1}, {"head_dim": 4, "kv_heads": 1, "qk_norm": True},
                                {"shared_experts": 1, "expert_kind": "swiglu", "head_dim": 10}])
def test_executor_parameters_match_the_count(kw):
    m = tiny_model(**kw)
    p = LayerParams(m, 0, 1, 0, 0, torch.device("cpu"), torch.float32)
    assert sum(q.numel() for q in p.dense_params()) == m.dense_params_per_layer()
