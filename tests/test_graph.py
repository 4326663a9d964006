"""Task graph: structure, dependencies, and rejection of models that do not fit."""
from __future__ import annotations

import networkx as nx
import pytest

from moesched import work
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.graph import build, check_memory, chunk_tokens
from moesched.knobs import Knobs
from moesched.models import PRESETS, MoEModel
from moesched.profile import Profile

NVLINK = Profile.load("analytic-h200x4-nvlink")
TWO_NODES = Profile.load("analytic-h200x4-2nodes")


def small(**kw) -> MoEModel:
    base = dict(name="small", layers=3, d_model=64, heads=4, seq_len=16, micro_batch=4, ffn_hidden=128,
                experts=8, top_k=2)
    base.update(kw)
    return MoEModel(**base)


def kinds(g: nx.DiGraph, kind: str) -> list[str]:
    return [t for t, a in g.nodes(data=True) if a["kind"] == kind]


def preds(g: nx.DiGraph, t: str) -> set[str]:
    return set(g.predecessors(t))


@pytest.mark.parametrize("knobs", [
    Knobs.uniform(3, 1),
    Knobs.uniform(3, 4, r_bwd=2, grad_chunk_bytes=10_000),
    Knobs.uniform(3, 2, at_chunked=True, grad_sync="after_backward"),
    Knobs(r_fwd=(1, 4, 2), r_bwd=(2, 1, 4), at_chunked=True, serialize=True),
])
def test_acyclic_and_seq_is_topological(knobs: Knobs) -> None:
    g = build(small(shared_experts=1), Cluster(1, 4), NVLINK, knobs)
    assert nx.is_directed_acyclic_graph(g)
    for a, b in g.edges:
        assert g.nodes[a]["seq"] < g.nodes[b]["seq"]
    assert sorted(a["seq"] for _, a in g.nodes(data=True)) == list(range(len(g)))
    for t, a in g.nodes(data=True):
        assert a["resource"] in g.graph["resources"]
        assert a["duration_us"] >= 0.0 and (a["duration_us"] > 0 or a["kind"] == "loss")


def test_forward_dependencies() -> None:
    m = small()
    g = build(m, Cluster(1, 4), NVLINK, Knobs.uniform(3, 4))
    for l in range(3):
        attn = f"L{l}.F.attn_fwd.c0"
        for c in range(4):
            d, e, cb = f"L{l}.F.dispatch.c{c}", f"L{l}.F.expert_fwd.c{c}", f"L{l}.F.combine.c{c}"
            assert preds(g, d) == {attn}
            assert preds(g, e) == {d}
            assert preds(g, cb) == {e}
            assert g.nodes[d]["tokens"] == m.tokens // 4
            assert g.nodes[d]["work"] == work.a2a_bytes(m, m.tokens // 4)
        if l:  # unchunked attention waits for every combine of the layer below
            assert preds(g, attn) == {f"L{l - 1}.F.combine.c{c}" for c in range(4)}
    assert preds(g, "loss") == {f"L2.F.combine.c{c}" for c in range(4)}


def test_backward_dependencies() -> None:
    g = build(small(shared_experts=1), Cluster(1, 4), NVLINK, Knobs.uniform(3, 2, r_bwd=2, at_chunked=True))
    for l in range(3):
        for c in range(2):
            cb, dx = f"L{l}.B.combine_bwd.c{c}", f"L{l}.B.expert_dx.c{c}"
            dw, db = f"L{l}.B.expert_dw.c{c}", f"L{l}.B.dispatch_bwd.c{c}"
            assert preds(g, dx) == {cb}
            assert preds(g, dw) == {dx}
            assert preds(g, db) == {dx}
            attn = f"L{l}.B.attn_bwd.c{c}"
            assert preds(g, attn) == {db, f"L{l}.B.shared_bwd.c{c}"}  # chunked: per-chunk gradient
            src = {"loss"} if l == 2 else {f"L{l + 1}.B.attn_bwd.c{c}"}
            assert preds(g, cb) == src


def test_backward_unchunked_attention_merges_chunks() -> None:
    g = build(small(), Cluster(1, 4), NVLINK, Knobs.uniform(3, 1, r_bwd=4))
    for l in range(3):
        assert preds(g, f"L{l}.B.attn_bwd.c0") == {f"L{l}.B.dispatch_bwd.c{c}" for c in range(4)}


@pytest.mark.parametrize("chunk_bytes", [None, 3_001, 7_777, 50_000, 10**9])
def test_grad_chunks_cover_their_layers(chunk_bytes: int | None) -> None:
    m = small(layers=4)
    cl = Cluster(2, 2, ep=2)  # expert-DP 2: expert gradients are reduced too
    g = build(m, cl, TWO_NODES, Knobs.uniform(4, 2, grad_chunk_bytes=chunk_bytes))
    for group, per_layer in (("dense", work.dense_grad_bytes(m)), ("expert", work.expert_grad_bytes(m, 2))):
        chunks = sorted((a["offset_bytes"], t) for t, a in g.nodes(data=True)
                        if a["kind"] == "grad_ar" and a["group"] == group)
        assert chunks, group
        total = 0
        for off, t in chunks:
            a = g.nodes[t]
            assert a["offset_bytes"] == total
            total += a["work"]
            assert a["nchunks"] == len(chunks)
            first, last = off // per_layer, (off + a["work"] - 1) // per_layer
            layers = {4 - 1 - p for p in range(first, last + 1)}
            assert set(a["layers"]) == layers
            ps = preds(g, t)
            assert {g.nodes[p]["layer"] for p in ps} == layers
            for l in layers:
                want = {f"L{l}.B.attn_bwd.c0"} if group == "dense" else {f"L{l}.B.expert_dw.c{c}" for c in range(2)}
                assert want <= ps
            assert all(g.nodes[p]["phase"] == "bwd" for p in ps)
        assert total == per_layer * 4
        if chunk_bytes is not None and chunk_bytes < per_layer * 4:
            assert len(chunks) == -(-per_layer * 4 // chunk_bytes)


@pytest.mark.parametrize("cluster,profile", [(Cluster(1, 4), NVLINK), (Cluster(2, 2, ep=2), TWO_NODES)])
def test_grad_after_backward_waits_for_all_of_backward(cluster: Cluster, profile: Profile) -> None:
    g = build(small(), cluster, profile, Knobs.uniform(3, 2, grad_chunk_bytes=5_000, grad_sync="after_backward"))
    bwd = {t for t, a in g.nodes(data=True) if a["phase"] == "bwd"}
    for t in kinds(g, "grad_ar"):
        assert bwd <= nx.ancestors(g, t), t  # expert dW of every layer included
    first = [t for t in kinds(g, "grad_ar") if g.nodes[t]["chunk"] == 0]
    assert len(first) == (2 if cluster.expert_dp > 1 else 1)
    for t in first:
        assert set(kinds(g, "expert_dw")) <= preds(g, t)


def test_hierarchical_a2a_has_intra_and_inter_hops() -> None:
    g = build(small(), Cluster(2, 2), TWO_NODES, Knobs.uniform(3, 2, a2a="hierarchical"))
    d0i, d0x = "L0.F.dispatch.c0.intra", "L0.F.dispatch.c0.inter"
    assert g.nodes[d0i]["resource"] == "comm_intra" and g.nodes[d0x]["resource"] == "comm_inter"
    assert preds(g, d0x) == {d0i} and preds(g, "L0.F.expert_fwd.c0") == {d0x}
    cbx, cbi = "L0.F.combine.c0.inter", "L0.F.combine.c0.intra"
    assert preds(g, cbx) == {"L0.F.expert_fwd.c0"} and preds(g, cbi) == {cbx}
    for t in kinds(g, "dispatch") + kinds(g, "combine") + kinds(g, "dispatch_bwd") + kinds(g, "combine_bwd"):
        assert g.nodes[t]["hop"] in ("intra", "inter")
    assert len(kinds(g, "dispatch")) == 2 * 3 * 2
    flat = build(small(), Cluster(2, 2), TWO_NODES, Knobs.uniform(3, 2))
    assert {flat.nodes[t]["scope"] for t in kinds(flat, "dispatch")} == {"world"}
    assert {flat.nodes[t]["resource"] for t in kinds(flat, "dispatch")} == {"comm_inter"}


def test_one_gpu_per_node_has_no_intra_hop() -> None:
    """Two nodes of one GPU: a hierarchical all-to-all degenerates to the flat one (no
    intra-node hop, so no intra-node cost needed from the profile)."""
    m = MoEModel(**{**small().__dict__, "experts": 4})
    g = build(m, Cluster(2, 1), None, Knobs.uniform(3, 2, a2a="hierarchical"))
    hops = {g.nodes[t].get("hop") for t in kinds(g, "dispatch") + kinds(g, "combine")}
    assert hops == {None} and {g.nodes[t]["scope"] for t in kinds(g, "dispatch")} == {"world"}


def test_serialize_chains_everything() -> None:
    g = build(small(), Cluster(1, 4), NVLINK, Knobs.uniform(3, 2, serialize=True))
    order = sorted(g.nodes, key=lambda t: g.nodes[t]["seq"])
    assert all(g.has_edge(a, b) for a, b in zip(order, order[1:]))


def test_capacity_caps_copies() -> None:
    m = small(capacity_factor=0.5)
    assert work.routed_copies(m, m.tokens) == m.slots_per_rank() < m.tokens * m.top_k
    assert work.routed_copies(small(capacity_factor=4.0), 64) == 64 * 2


def test_chunk_tokens_sum() -> None:
    assert chunk_tokens(64, 4) == [16] * 4 and sum(chunk_tokens(10, 3)) == 10


def test_graph_without_profile_has_zero_durations() -> None:
    g = build(small(), Cluster(1, 4), None, Knobs.uniform(3, 2))
    assert all(a["duration_us"] == 0.0 for _, a in g.nodes(data=True))


@pytest.mark.parametrize("name", ["GPT2-XL-MoE", "Mixtral-7B-FSMoE", "GPT2-Tiny-MoE"])
def test_presets_build(name: str) -> None:
    m = PRESETS[name]
    g = build(m, Cluster(1, 4), NVLINK, Knobs.uniform(m.layers, 2))
    assert nx.is_directed_acyclic_graph(g) and len(kinds(g, "expert_fwd")) == 2 * m.layers


# ---- bad input ----------------------------------------------------------------------
def test_unknown_preset() -> None:
    with pytest.raises(MoeschedError, match="unknown model preset"):
        MoEModel.from_name("GPT5-MoE")
    assert MoEModel.from_name("gpt2-xl-moe").name == "GPT2-XL-MoE"


def test_experts_not_divisible_over_ep() -> None:
    with pytest.raises(MoeschedError, match="not divisible"):
        build(small(experts=6), Cluster(1, 4), NVLINK, Knobs.uniform(3, 1))


def test_top_k_exceeds_experts() -> None:
    with pytest.raises(MoeschedError, match="top_k"):
        small(experts=2, top_k=3)


@pytest.mark.parametrize("field", ["layers", "d_model", "heads", "seq_len", "micro_batch", "ffn_hidden",
                                   "experts", "top_k"])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_sizes(field: str, value: int) -> None:
    with pytest.raises(MoeschedError, match="positive"):
        small(**{field: value})


def test_other_bad_models_and_clusters() -> None:
    for kw in (dict(d_model=66), dict(capacity_factor=0.0), dict(expert_kind="relu"), dict(dtype="int8"),
               dict(shared_experts=-1), dict(d_model=10**30), dict(layers=2000), dict(vocab_size=1 << 30),
               dict(rope_theta=float("inf"))):
        with pytest.raises(MoeschedError):
            small(**kw)
    for text in ("4", "1x0", "2x2/ep3", "axb"):
        with pytest.raises(MoeschedError):
            Cluster.parse(text)
    with pytest.raises(MoeschedError, match="wrong keys"):
        MoEModel.from_dict({"name": "x"})


def test_profile_cluster_layout_mismatch() -> None:
    with pytest.raises(MoeschedError, match="measured on 1x4"):
        build(small(), Cluster(2, 2), NVLINK, Knobs.uniform(3, 1))


def test_degree_not_dividing_tokens() -> None:
    m = small(seq_len=6, micro_batch=1)  # 6 tokens
    with pytest.raises(MoeschedError, match="does not divide the 6 tokens"):
        build(m, Cluster(1, 4), NVLINK, Knobs.uniform(3, 4))
    with pytest.raises(MoeschedError, match="micro-batch"):
        build(small(micro_batch=2), Cluster(1, 4), NVLINK, Knobs.uniform(3, 4, at_chunked=True))
    with pytest.raises(MoeschedError, match="3 layers"):
        build(small(), Cluster(1, 4), NVLINK, Knobs.uniform(2, 1))


def test_bad_knobs() -> None:
    for kw in (dict(r_fwd=(0,), r_bwd=(1,)), dict(r_fwd=(17,), r_bwd=(1,)), dict(r_fwd=(1, 1), r_bwd=(1,)),
               dict(r_fwd=(1,), r_bwd=(1,), grad_chunk_bytes=0), dict(r_fwd=(1,), r_bwd=(1,), grad_sync="x"),
               dict(r_fwd=(1,), r_bwd=(1,), a2a="ring")):
        with pytest.raises(MoeschedError):
            Knobs(**kw)


def test_check_memory() -> None:
    check_memory(small(), Cluster(1, 4), NVLINK)
    with pytest.raises(MoeschedError, match=r"Mixtral-8x22B .* binding term optimizer state \d+ GB/rank"):
        check_memory(PRESETS["Mixtral-8x22B"], Cluster(1, 4), NVLINK)


def test_chunk_range_tiles_the_tokens_and_matches_the_executors_cut() -> None:
    """One definition of chunk ranges: contiguous, covering [0, T), equal when n divides T
    (the executor's c*T//n), and the graph's chunk_tokens are its lengths."""
    from moesched.graph import chunk_tokens
    from moesched.work import chunk_range
    for T in (1, 7, 64, 4096):
        for n in (1, 2, 3, 8):
            if n > T:
                continue
            r = [chunk_range(T, n, c) for c in range(n)]
            assert r[0][0] == 0 and r[-1][1] == T
            assert all(a < b for a, b in r) and all(r[i][1] == r[i + 1][0] for i in range(n - 1))
            assert chunk_tokens(T, n) == [b - a for a, b in r]
            if T % n == 0:
                assert r == [(c * T // n, (c + 1) * T // n) for c in range(n)]
