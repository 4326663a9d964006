"""Dense (non-MoE) layers (issue 20): MoEModel's dense_layers / dense_ffn_hidden fields are
validated and round-trip, presets keep their dicts, and Hugging Face configs give them
(Qwen3-MoE mlp_only_layers / decoder_sparse_step, DeepSeek first_k_dense_replace)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

import networkx as nx

from moesched import dense, hfconfig
from moesched.cluster import Cluster
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.profile import Profile
from moesched.errors import MoeschedError
from moesched.models import PRESETS, MoEModel

BASE = MoEModel.from_name("GPT2-Tiny-MoE")
NVLINK = Profile.load("analytic-h200x4-nvlink")

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
        assert ("dense_layers" in d) == ("dense_ffn_hidden" in d) == bool(p.dense_layers)
        assert MoEModel.from_dict(d) == p
        assert p.moe_layers == tuple(l for l in range(p.layers) if l not in p.dense_layers)


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


def small(**kw) -> MoEModel:
    base = dict(name="small", layers=3, d_model=64, heads=4, seq_len=16, micro_batch=4, ffn_hidden=128,
                experts=8, top_k=2, expert_kind="swiglu", dense_layers=(0,), dense_ffn_hidden=96)
    return MoEModel(**{**base, **kw})


@pytest.mark.parametrize("knobs", [
    Knobs.uniform(3, 1),
    Knobs.uniform(3, 2, r_bwd=4, grad_chunk_bytes=10_000),
    Knobs(r_fwd=(2, 4, 1), r_bwd=(4, 1, 2), at_chunked=True, grad_sync="after_backward"),
])
def test_graph_of_a_dense_layer(knobs):
    """Layer 0 is attention + dense FFN: no all-to-all, no expert task; its FFN is priced as
    the shared expert of dense.ffn_view; its gradients join the dense all-reduce only."""
    m, cl = small(), Cluster(nodes=1, gpus_per_node=4, ep=2)  # expert_dp = 2: both gradient groups
    g = build(m, cl, NVLINK, knobs)
    assert nx.is_directed_acyclic_graph(g)
    l0 = {a["kind"] for _, a in g.nodes(data=True) if a["layer"] == 0}
    assert l0 == {"attn_fwd", "shared_fwd", "shared_bwd", "attn_bwd"}
    assert not any(a["kind"] == "shared_fwd" for _, a in g.nodes(data=True) if a["layer"] == 1)  # no shared experts
    view = dense.ffn_view(m)
    for t, a in g.nodes(data=True):
        if a["kind"] in ("shared_fwd", "shared_bwd"):
            flops = dense.ffn_fwd_flops(m, a["tokens"]) * (2 if a["kind"] == "shared_bwd" else 1)
            assert a["work"] == flops
            assert a["duration_us"] == NVLINK.compute_us(a["kind"], flops, view.shape_key(), view, 2)
            assert nx.has_path(g, t, "loss") == (a["kind"] == "shared_fwd")
    # forward order: layer 0's FFN feeds layer 1's attention; backward: into layer 0's attention
    for c in range(knobs.r_fwd[1]):
        assert nx.has_path(g, "L0.F.shared_fwd.c0", f"L1.F.attn_fwd.c{c if knobs.at_chunked else 0}")
    assert nx.has_path(g, "L0.B.shared_bwd.c0", "L0.B.attn_bwd.c0")
    grads = {grp: [a for _, a in g.nodes(data=True) if a.get("group") == grp] for grp in ("dense", "expert")}
    assert sum(a["work"] for a in grads["dense"]) == m.dense_layer_params() * 2 + 2 * m.dense_params_per_layer() * 2
    assert sum(a["work"] for a in grads["expert"]) == 2 * (8 // 2) * m.expert_params() * 2
    assert all(0 not in a["layers"] for a in grads["expert"])
    # every chunk holding layer 0's dense bytes (first in the buffer: last layer first) waits for its FFN dW
    held = [(t, a) for t, a in g.nodes(data=True) if a.get("group") == "dense" and 0 in a["layers"]]
    assert held and all(nx.has_path(g, "L0.B.shared_bwd.c0", t) for t, _ in held)
    assert held[-1][1]["offset_bytes"] + held[-1][1]["work"] == sum(a["work"] for a in grads["dense"])


def test_dense_layers_in_simulation_and_memory():
    """A dense first layer makes the step shorter than an MoE one of the same shapes at the
    same FFN size, and memory counts its parameters whole and no all-to-all rows."""
    from moesched.memory import rank_memory
    from moesched.sim import simulate
    cl, k = Cluster(nodes=1, gpus_per_node=4), Knobs.uniform(3, 1)
    moe, mixed = small(dense_layers=(), dense_ffn_hidden=None), small()
    t_moe = simulate(build(moe, cl, NVLINK, k)).makespan_us
    t_mixed = simulate(build(mixed, cl, NVLINK, k)).makespan_us
    assert 0 < t_mixed < t_moe
    dp, ep = dense.param_counts(mixed, 4)
    assert dp == 2 * mixed.dense_params_per_layer() + mixed.dense_layer_params()
    assert ep == 2 * 2 * mixed.expert_params()
    r_moe, r_mixed = rank_memory(moe, cl), rank_memory(mixed, cl)
    assert r_mixed.a2a_bytes * 3 == r_moe.a2a_bytes * 2
    assert r_mixed.params_bytes == (dp + ep) * mixed.bytes_per_elem


def test_compiled_path_and_operator_pricing_of_dense_layers():
    """build_compiled equals the DiGraph path with dense layers; a profile with operator
    tables prices the dense FFN from its GEMMs (hidden H_dense), not the experts'. """
    from test_graph_compiled import _gpu_only, assert_same_compiled

    from moesched.graph import build_compiled
    from moesched.sim import Compiled
    prof, cl = _gpu_only("h200x4-nvlink"), Cluster(nodes=1, gpus_per_node=4, ep=2)
    for k in (Knobs.uniform(3, 2, grad_chunk_bytes=20_000), Knobs(r_fwd=(1, 2, 4), r_bwd=(2, 2, 1), at_chunked=True)):
        m = small(dense_layers=(0, 2), dtype="bf16")
        assert_same_compiled(build_compiled(m, cl, prof, k), Compiled(build(m, cl, prof, k)))
    # without a curve for the view's shape, a profile with operator tables composes these GEMMs
    from moesched import ops
    m = small()
    gemms = [(o.m, o.n, o.k) for o in ops.work_ops("shared_fwd", dense.ffn_view(m), dense.ffn_fwd_flops(m, 64))
             if isinstance(o, ops.Gemm)]
    assert gemms == [(64, 96, 64), (64, 96, 64), (64, 64, 96)]  # gate, up (T, H_dense, M); down (T, M, H_dense)


def test_cli_solves_a_qwen3_moe_config_with_a_dense_first_layer(tmp_path):
    """`moesched solve --model config.json` with mlp_only_layers=[0]: the solver's one-layer
    search and the gradient windows handle a layer without all-to-all; the plan keeps the field."""
    from moesched.cli import main
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**QWEN3, "hidden_size": 64, "head_dim": 16, "num_experts": 8, "mlp_only_layers": [0]}))
    out = tmp_path / "plan.json"
    assert main(["solve", "--model", str(cfg), "--profile", "cpu-gloo-2", "--out", str(out), "--time-limit", "2"]) == 0
    plan = json.loads(out.read_text())
    assert plan["model"]["dense_layers"] == [0] and plan["model"]["dense_ffn_hidden"] == 40
    assert MoEModel.from_dict(plan["model"]).moe_layers == (1, 2, 3) and plan["predicted"]["step_us"] > 0


def test_ppmoe_layouts_price_dense_layers_as_tp_mlps():
    """Under TP a dense layer is attention + the dense FFN split t ways (Megatron's TP MLP):
    no expert tasks, no expert gradients, its FFN's parameters and FLOPs divided by t."""
    from moesched.layoutgraph import build as build_layout
    from moesched.layouts import Layout, check_layout, layer_param_counts, layout_memory, param_counts
    m, c, lay = small(), Cluster(1, 4), Layout(2)
    g = build_layout(m, c, NVLINK, lay)
    kinds0 = {a["kind"] for _, a in g.nodes(data=True) if a["layer"] == 0}
    assert kinds0 == {"attn_fwd", "attn_bwd", "shared_fwd", "shared_bwd", "tp_ar"}
    assert "G.expert.L0" not in g and "G.dense.L0" in g and "G.expert.L1" in g
    ffn = [a for _, a in g.nodes(data=True) if a["layer"] == 0 and a["kind"] == "shared_fwd"][0]
    assert ffn["work"] == 2 * m.tokens * m.dense_ffn_params()  # the group's 2*T tokens over t = 2
    d0, e0 = layer_param_counts(m, lay, 0)
    assert e0 == 0 and d0 == (m.attention_params() + m.dense_ffn_params()) // 2 + 2 * m.d_model
    assert param_counts(m, lay)[0] == d0 + 2 * layer_param_counts(m, lay, 1)[0]
    assert layout_memory(m, c, lay).params_bytes == m.bytes_per_elem * sum(param_counts(m, lay))
    with pytest.raises(MoeschedError, match="dense layers' FFN hidden size 91"):
        check_layout(small(dense_ffn_hidden=91), c, lay)


def test_total_params_count_dense_layers_whole():
    from moesched.commands.models import total_params
    m = small()  # layer 0 dense; layers 1, 2 with all 8 experts
    assert total_params(m) == m.dense_layer_params() + 2 * (m.dense_params_per_layer() + 8 * m.expert_params())
    p = PRESETS["Mixtral-8x7B"]
    assert total_params(p) == p.layers * (p.dense_params_per_layer() + p.experts * p.expert_params()) + \
        p.embedding_params()
