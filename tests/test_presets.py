"""The published presets are faithful to their checkpoints' Hugging Face configs: the
fields ``from_hf_config`` reads, and the parameter count of the ``transformers`` model
built from the same config (meta device: nothing allocated)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from moesched.cli import main
from moesched.commands.models import total_params
from moesched.errors import MoeschedError
from moesched.hfconfig import dense_fields
from moesched.models import PRESETS, MoEModel

# config.json of mistralai/Mixtral-8x7B-v0.1, mistral-community/Mixtral-8x22B-v0.1 and
# Qwen/Qwen3-30B-A3B (the fields that set the architecture)
MIXTRAL = dict(model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
               rms_norm_eps=1e-5, rope_theta=1e6, vocab_size=32000, tie_word_embeddings=False, sliding_window=None)
MIXTRAL_22B = {**MIXTRAL, "hidden_size": 6144, "intermediate_size": 16384, "num_hidden_layers": 56,
               "num_attention_heads": 48}
QWEN3_30B = dict(model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                 num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                 num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, rms_norm_eps=1e-6, rope_theta=1e6,
                 vocab_size=151936, tie_word_embeddings=False, mlp_only_layers=[], decoder_sparse_step=1)
# config.json of deepseek-ai/DeepSeek-V2-Lite (its dense first layer; MLA is approximated)
DEEPSEEK_V2_LITE = dict(model_type="deepseek_v2", num_hidden_layers=27, first_k_dense_replace=1, moe_layer_freq=1,
                        n_routed_experts=64, intermediate_size=10944, moe_intermediate_size=1408)

CASES = [("Mixtral-8x7B", MIXTRAL), ("Mixtral-8x22B", MIXTRAL_22B), ("Qwen3-30B-A3B", QWEN3_30B)]


@pytest.mark.parametrize("name,cfg", CASES, ids=[c[0] for c in CASES])
def test_preset_is_its_hf_config(name: str, cfg: dict) -> None:
    p = PRESETS[name]
    assert MoEModel.from_hf_config(cfg, seq_len=p.seq_len, micro_batch=p.micro_batch, name=name) == p


def _hf_params(cfg: dict) -> int:
    transformers = pytest.importorskip("transformers")
    kind = {"mixtral": ("MixtralConfig", "MixtralForCausalLM"), "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM")}
    conf_cls, model_cls = (getattr(transformers, n) for n in kind[cfg["model_type"]])
    conf = conf_cls(**{k: v for k, v in cfg.items() if k != "model_type"})
    with torch.device("meta"):
        model = model_cls(conf)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,cfg", CASES, ids=[c[0] for c in CASES])
def test_parameter_count_is_the_transformers_models(name: str, cfg: dict) -> None:
    """Mixtral-8x7B 46.70 B, Mixtral-8x22B 140.62 B, Qwen3-30B-A3B 30.53 B, embeddings included."""
    assert total_params(PRESETS[name]) == _hf_params(cfg)


def test_deepseek_v2_lite_dense_layer_and_size() -> None:
    """Its dense first layer as the config sets it; 15.7 B parameters published (the MLA
    approximation adds 3 M per layer: within 1%)."""
    p = PRESETS["DeepSeek-V2-Lite"]
    d = dense_fields(DEEPSEEK_V2_LITE)
    assert (p.dense_layers, p.dense_ffn_hidden) == (d["dense_layers"], d["dense_ffn_hidden"]) == ((0,), 10944)
    assert abs(total_params(p) / 15.7e9 - 1) < 0.01


def test_with_layers_keeps_the_dense_layers_that_fit() -> None:
    p = PRESETS["DeepSeek-V2-Lite"]
    two = p.with_layers(2)
    assert (two.layers, two.dense_layers, two.moe_layers) == (2, (0,), (1,))
    q = replace(PRESETS["Qwen3-30B-A3B"], dense_layers=(3, 40), dense_ffn_hidden=6144)
    assert q.with_layers(8).dense_layers == (3,) and q.with_layers(2).dense_ffn_hidden is None
    with pytest.raises(MoeschedError, match="first 1 layer.* are all dense"):
        p.with_layers(1)


def test_cli_layers_leaving_only_dense_layers_is_one_line(capsys: pytest.CaptureFixture, tmp_path) -> None:
    out = tmp_path / "plan.json"
    assert main(["solve", "--model", "DeepSeek-V2-Lite", "--layers", "1", "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("moesched: error: ") and err.count("\n") == 1 and "all dense" in err


def test_shape_key_names_grouped_query_attention_only_when_set() -> None:
    """Key/value heads and head size enter the shape key only where they differ from MHA of
    d_model / heads: a profile's curves of MHA shapes never price a GQA model."""
    base = PRESETS["Mixtral-7B-FSMoE"]
    assert "kv" not in base.shape_key() and "-d" not in base.shape_key().split("-L")[0]
    assert replace(base, kv_heads=32, head_dim=128).shape_key() == base.shape_key()  # the MHA defaults, spelled out
    assert "-kv8-" in replace(base, kv_heads=8).shape_key()
    assert "-kv4-d128-" in PRESETS["Qwen3-30B-A3B"].shape_key()


def test_memory_counts_embeddings_and_logits() -> None:
    """Untied embeddings count twice (embedding and head) plus the final norm; tied once; the
    logits [T, V] in the model's dtype and their fp32 copy join the activations."""
    from moesched.cluster import Cluster
    from moesched.memory import rank_memory
    m = PRESETS["Mixtral-8x7B"]
    assert m.embedding_params() == 2 * 32000 * 4096 + 4096
    assert replace(m, tie_embeddings=True).embedding_params() == 32000 * 4096 + 4096
    bare = replace(m, vocab_size=None)
    a, b = rank_memory(m, Cluster(4, 8, ep=8), 1), rank_memory(bare, Cluster(4, 8, ep=8), 1)
    assert a.params_bytes - b.params_bytes == 2 * m.embedding_params()
    assert a.activations_bytes - b.activations_bytes == m.tokens * 32000 * (2 + 4)


def test_gqa_attention_work_and_memory_reduce_to_mha() -> None:
    """With kv_heads = heads and head_dim = d_model / heads the attention FLOPs, the layout
    activations and the attention activations are those of multi-head attention."""
    from moesched import dense, work
    from moesched.cluster import Cluster
    from moesched.layouts import Layout, layout_memory
    m = PRESETS["Mixtral-7B-FSMoE"]
    spelled = replace(m, kv_heads=m.heads, head_dim=m.d_model // m.heads)
    M, L, E, T = m.d_model, m.seq_len, m.experts, m.tokens
    assert work.attn_fwd_flops(m, 1) == work.attn_fwd_flops(spelled, 1) == 8 * M * M + 4 * L * M + 2 * M * E
    assert dense.attention_activation_bytes(m) == 9 * T * M * 2 + 4 * (T * m.heads + 2 * T)
    assert layout_memory(m, Cluster(1, 4), Layout(2)) == layout_memory(spelled, Cluster(1, 4), Layout(2))
    gqa = replace(m, kv_heads=8)  # fewer K/V weights and FLOPs, but the repeated K/V copies kept for SDPA
    assert work.attn_fwd_flops(gqa, 1) < work.attn_fwd_flops(m, 1)
    assert dense.attention_activation_bytes(gqa) > dense.attention_activation_bytes(m)
