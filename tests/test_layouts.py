"""PPMoE layouts (moesched.layouts, moesched.layoutgraph): the tasks of a TP / EP-inside-TP
step, their prices from the profile and cluster models, the memory per layout, and
refusals of layouts that do not divide the model."""
from __future__ import annotations

import pytest

from moesched.cluster import Cluster, collective_us
from moesched.errors import MoeschedError
from moesched.graph import build as build_ep
from moesched.kinds import A2A_KINDS
from moesched.knobs import Knobs
from moesched.layoutgraph import build
from moesched.layouts import Layout, check_layout, layout_memory, param_counts
from moesched.memory import rank_memory
from moesched.models import PRESETS, MoEModel
from moesched.network import load_network
from moesched.profile import Profile
from moesched.sim import simulate

NVLINK = Profile.load("h200x4-nvlink")
TINY = MoEModel(name="tiny", layers=2, d_model=32, heads=4, seq_len=8, micro_batch=2, ffn_hidden=48, experts=4,
                top_k=2, expert_kind="swiglu", shared_experts=1, dtype="fp32")


def kinds_by_layer(g, layer: int, phase: str) -> list[str]:
    """Kinds of one layer and phase in creation order (with the collective's place)."""
    nodes = sorted((a["seq"], t) for t, a in g.nodes(data=True) if a["layer"] == layer and a["phase"] == phase)
    return [t.split(".", 2)[2].replace(".c0", "") for _, t in nodes]


def test_ppmoe_layer_tasks() -> None:
    g = build(TINY, Cluster(1, 4), NVLINK, Layout(4))
    assert kinds_by_layer(g, 0, "fwd") == ["attn_fwd", "tp_ar.attn", "expert_fwd", "shared_fwd", "tp_ar.moe"]
    assert kinds_by_layer(g, 0, "bwd") == ["expert_dx", "shared_bwd", "tp_ar.moe", "attn_bwd", "tp_ar.attn",
                                           "expert_dw"]
    assert not any(a["kind"] in A2A_KINDS for _, a in g.nodes(data=True))
    assert not any(a["kind"] == "grad_ar" for _, a in g.nodes(data=True))  # one TP group: no DP
    sp = build(TINY, Cluster(1, 4), NVLINK, Layout(2, sequence_parallel=True))
    assert kinds_by_layer(sp, 1, "fwd") == ["tp_ag.attn", "attn_fwd", "tp_rs.attn", "tp_ag.moe", "expert_fwd",
                                            "shared_fwd", "tp_rs.moe"]
    assert kinds_by_layer(sp, 1, "bwd") == ["tp_ag.moe", "expert_dx", "shared_bwd", "tp_rs.moe", "tp_ag.attn",
                                            "attn_bwd", "tp_rs.attn", "expert_dw"]
    grads = sorted(t for t, a in sp.nodes(data=True) if a["kind"] == "grad_ar")  # 2 TP groups: DP of 2
    assert grads == ["G.dense.L0", "G.dense.L1", "G.expert.L0", "G.expert.L1"]
    tl = simulate(sp)
    start = dict(zip(tl.df["task"], tl.df["start_us"]))
    end = dict(zip(tl.df["task"], tl.df["end_us"]))
    for u, v in sp.edges:
        assert start[v] >= end[u] - 1e-9


def test_prices_come_from_the_profile_and_the_cluster_model() -> None:
    m = PRESETS["LLaMA2-MoE"]
    g = build(m, Cluster(1, 4), NVLINK, Layout(4))
    x = 4 * m.tokens * m.d_model * m.bytes_per_elem  # [t*B*L, M] of the TP group
    ar = g.nodes["L0.F.tp_ar.c0.attn"]
    assert ar["work"] == x and ar["duration_us"] == NVLINK.comm_us("all_reduce", "intra", x)
    e = g.nodes["L0.F.expert_fwd.c0"]
    copies = m.tokens * m.top_k  # a rank runs T*k routed copies under even routing
    flops = copies * 2.0 * m.expert_gemms * m.d_model * m.ffn_hidden
    copy_us = 4 * copies * m.d_model * m.bytes_per_elem / 4.8e6  # slice + assign, read + write, H200 HBM
    assert e["copy_us"] == pytest.approx(copy_us, rel=1e-12)
    assert e["work"] == flops and e["duration_us"] == pytest.approx(
        NVLINK.compute_us("expert_fwd", flops, m.shape_key(), m, 4) + copy_us, rel=1e-12)
    serial = build(m, Cluster(1, 4), NVLINK, Layout(4, grouped_experts=False)).nodes["L0.F.expert_fwd.c0"]
    n = m.experts // 4
    assert serial["calls"] == n
    assert serial["duration_us"] == pytest.approx(n * NVLINK.compute_us("expert_fwd", flops / n, m.shape_key(), m, 4)
                                                  + copy_us)
    big = Cluster(4, 8, network=load_network("dgx-h200"))
    g8 = build(m, big, NVLINK, Layout(8))
    assert g8.nodes["L0.F.tp_ar.c0.moe"]["duration_us"] == collective_us(
        Cluster(4, 8, 8, big.network), NVLINK, "all_reduce", "ep", 8 * m.tokens * m.d_model * m.bytes_per_elem)
    dense, expert = param_counts(m, Layout(8))
    assert g8.nodes["G.expert.L3"]["duration_us"] == collective_us(
        Cluster(4, 8, 8, big.network), NVLINK, "all_reduce", "expert_dp", expert // m.layers * m.bytes_per_elem)
    assert g8.nodes["G.expert.L3"]["resource"] == "comm_inter"


def test_ep_layout_is_todays_graph() -> None:
    g, ref = build(TINY, Cluster(1, 4), NVLINK, Layout(1)), build_ep(TINY, Cluster(1, 4), NVLINK, Knobs.uniform(2, 1))
    assert list(g.nodes(data="duration_us")) == list(ref.nodes(data="duration_us"))
    assert simulate(g).makespan_us == simulate(ref).makespan_us


def test_memory_per_layout() -> None:
    c = Cluster(2, 4)
    assert layout_memory(TINY, c, Layout(1)) == rank_memory(TINY, c)
    mem = layout_memory(TINY, c, Layout(4))
    M, H, E, L = 32, 48, 4, 2
    attn = 4 * M * M
    dense = L * (attn // 4 + 2 * M + M * E + 3 * M * H // 4)   # attention and shared expert split 4 ways
    expert = L * 1 * 3 * M * H                                 # E/t = 1 SwiGLU expert per rank
    assert mem.params_bytes == mem.grads_bytes == 4 * (dense + expert)
    assert mem.optimizer_bytes == 8 * (dense + expert)         # fp32: two moments, no master copy
    assert layout_memory(TINY, c, Layout(4), zero=1).optimizer_bytes == 8 * (dense + expert) // 2  # DP of 2
    assert mem.a2a_bytes == 0
    sp = layout_memory(TINY, c, Layout(4, sequence_parallel=True))
    assert sp.activations_bytes < mem.activations_bytes and sp.params_bytes == mem.params_bytes


@pytest.mark.parametrize("model,cluster,tp,what", [
    ("GPT2-XL-MoE", Cluster(1, 4), 2, "25 heads"),
    ("LLaMA2-MoE", Cluster(2, 4), 8, "4 GPUs per node"),
    ("Mixtral-8x7B", Cluster(2, 8), 16, "8 GPUs per node"),
    ("DeepSeek-V2-Lite", Cluster(1, 8), 3, "8 GPUs per node"),
])
def test_layouts_that_do_not_divide_are_refused(model: str, cluster: Cluster, tp: int, what: str) -> None:
    with pytest.raises(MoeschedError, match=what):
        check_layout(PRESETS[model], cluster, Layout(tp))
    with pytest.raises(MoeschedError, match="TP size"):
        check_layout(TINY, cluster, Layout(0))
