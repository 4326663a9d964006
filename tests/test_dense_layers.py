"""Dense (non-MoE) layers (issue 20): MoEModel's dense_layers / dense_ffn_hidden fields are
validated and round-trip, presets keep their dicts, and Hugging Face configs give them
(Qwen3-MoE mlp_only_layers / decoder_sparse_step, DeepSeek first_k_dense_replace)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from moesched import hfconfig
from moesched.errors import MoeschedError
from moesched.models import PRESETS, MoEModel

BASE = MoEModel.from_name("GPT2-Tiny-MoE")

QWEN3 = dict(model_type="qwen3_moe", vocab_size=53, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, intermediate_size=40, moe_intermediate_size=24, num_experts=4,
             num_experts_per_tok=2, rms_norm_eps=1e-6, rope_theta=1e6, norm_topk_prob=True)
# DeepSeek-V2-Lite's published config.json (the fields dense_fields reads)
DEEPSEEK_V2_LITE = dict(model_type="deepseek_v2", num_hidden_layers=27, first_k_dense_replace=1, moe_layer_freq=1,
                        n_routed_experts=64, intermediate_size=10944, moe_intermediate_size=1408)


def test_dense_fields_round_trip_and_derived_sizes():
    m = replace(BASE, dense_layers=[0, 1], dense_ffn_hidden=1024)
    assert m.dense_layers == (0, 1) and hash(m) == hash(replace(BASE, dense_layers=(0, 1), dense_ffn_hidden=1024))
    d = json.loads(json.dumps(m.to_dict()))
    assert d["dense_layers"] == [0, 1] and d["dense_ffn_hidden"] == 1024
    assert MoEModel.from_dict(d) == m
    assert m.moe_layers == tuple(range(2, 12)) and m.is_dense(1) and not m.is_dense(2)
    M = 256  # gpt FFN: 2 GEMMs of M x 1024; attention 4 M^2; two norms
    assert m.dense_ffn_params() == 2 * M * 1024
    assert m.dense_layer_params() == 4 * M * M + 2 * M + 2 * M * 1024


def test_presets_keep_their_dicts():
    for p in PRESETS.values():
        d = p.to_dict()
        assert "dense_layers" not in d and "dense_ffn_hidden" not in d
        assert MoEModel.from_dict(d) == p and p.dense_layers == () and p.moe_layers == tuple(range(p.layers))


@pytest.mark.parametrize("kw, words", [
    (dict(dense_layers=[0]), "go together"),
    (dict(dense_ffn_hidden=64), "go together"),
    (dict(dense_layers=[1, 0], dense_ffn_hidden=64), "sorted distinct"),
    (dict(dense_layers=[0, 0], dense_ffn_hidden=64), "sorted distinct"),
    (dict(dense_layers=[12], dense_ffn_hidden=64), r"\[0, 12\)"),
    (dict(dense_layers=[-1], dense_ffn_hidden=64), "sorted distinct"),
    (dict(dense_layers=list(range(12)), dense_ffn_hidden=64), "at least one must be MoE"),
    (dict(dense_layers="0", dense_ffn_hidden=64), "list of layer indices"),
    (dict(dense_layers=[True], dense_ffn_hidden=64), "list of layer indices"),
    (dict(dense_layers=[0], dense_ffn_hidden=0), "positive integer"),
])
def test_bad_dense_fields_are_refused(kw, words):
    with pytest.raises(MoeschedError, match=words):
        replace(BASE, **kw)


def test_qwen3_moe_config_dense_layers():
    m = MoEModel.from_hf_config({**QWEN3, "mlp_only_layers": [0]}, seq_len=8)
    assert (m.dense_layers, m.dense_ffn_hidden, m.ffn_hidden) == ((0,), 40, 24)
    step = MoEModel.from_hf_config({**QWEN3, "decoder_sparse_step": 2, "mlp_only_layers": [1]})
    assert step.dense_layers == (0, 1, 2) and step.moe_layers == (3,)  # (i + 1) % 2 == 0 and not in [1]
    assert MoEModel.from_hf_config({**QWEN3, "decoder_sparse_step": 2}).dense_layers == (0, 2)
    plain = MoEModel.from_hf_config(QWEN3)
    assert plain.dense_layers == () and plain.dense_ffn_hidden is None and "dense_layers" not in plain.to_dict()
    with pytest.raises(MoeschedError, match="mlp_only_layers must be a list"):
        MoEModel.from_hf_config({**QWEN3, "mlp_only_layers": 0})
    with pytest.raises(MoeschedError, match="at least one must be MoE"):
        MoEModel.from_hf_config({**QWEN3, "mlp_only_layers": [0, 1, 2, 3]})


def test_deepseek_dense_layers_are_read_but_mla_is_refused():
    assert hfconfig.dense_fields(DEEPSEEK_V2_LITE) == dict(dense_layers=(0,), dense_ffn_hidden=10944)
    v3 = {**DEEPSEEK_V2_LITE, "model_type": "deepseek_v3", "num_hidden_layers": 61, "first_k_dense_replace": 3,
          "intermediate_size": 18432}
    assert hfconfig.dense_fields(v3) == dict(dense_layers=(0, 1, 2), dense_ffn_hidden=18432)
    freq = hfconfig.dense_fields({**DEEPSEEK_V2_LITE, "num_hidden_layers": 5, "moe_layer_freq": 2})
    assert freq["dense_layers"] == (0, 1, 3)  # MoE iff i >= 1 and i % 2 == 0
    with pytest.raises(MoeschedError, match="multi-head latent attention"):
        MoEModel.from_hf_config({**QWEN3, **DEEPSEEK_V2_LITE})


def test_unscheduled_dense_layers_are_refused_by_the_graph():
    from moesched.cluster import Cluster
    from moesched.graph import build
    from moesched.knobs import Knobs
    m = replace(BASE, layers=2, dense_layers=[0], dense_ffn_hidden=64)
    with pytest.raises(MoeschedError, match="dense"):
        build(m, Cluster(nodes=1, gpus_per_node=2), None, Knobs.uniform(2))
