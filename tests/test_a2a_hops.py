"""The hierarchical (2DH) all-to-all: the bytes each hop carries, each hop priced by them,
and hierarchical winning where the flat all-to-all is latency-bound (many small messages
across nodes) and losing where it is bandwidth-bound (same off-node bytes plus a hop)."""
from __future__ import annotations

import pytest

from moesched import work
from moesched.analytic import H200_BYTES, _compute
from moesched.cluster import Cluster
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Cost, Profile
from moesched.schedules.base import Schedule, evaluate, seq_priority
from moesched.solve.api import solve

N, G = 4, 8  # nodes, GPUs per node
CLUSTER = Cluster(N, G)
LAT_NET_US, LAT_NVL_US = 20.0, 3.0  # per message (peer) across nodes, inside a node
NIC_B_PER_US, NVL_B_PER_US = 25e3, 400e3  # one node's NIC, one GPU's NVLink (bytes/µs)


def _a2a(peers: int, off_node: float, off_gpu: float) -> Cost:
    """An all-to-all of buffer x: a latency per peer, off-node bytes over the NIC that the
    node's G ranks share, off-GPU bytes over NVLink (x is the buffer: fractions apply)."""
    return Cost(peers * (LAT_NET_US if off_node else LAT_NVL_US), off_node * G / NIC_B_PER_US + off_gpu / NVL_B_PER_US)


def _profile() -> Profile:
    P = N * G
    a2a = {"intra": _a2a(G - 1, 0.0, (G - 1) / G),
           "inter": _a2a(N - 1, (N - 1) / N, 0.0),
           "world": _a2a(P - 1, (N - 1) / N, 0.0)}
    ar = {s: Cost(50.0, 2.0 / NIC_B_PER_US) for s in ("intra", "inter", "world")}
    return Profile(name="latency-bound-4x8", kind="analytic", description="test: per-message latency model",
                   hardware={"gpu": "test", "nodes": N, "gpus_per_node": G, "gpu_memory_bytes": H200_BYTES},
                   meta={}, compute=_compute(), comm={"all_to_all": a2a, "all_reduce": ar})


def _model(d_model: int, seq_len: int, micro_batch: int) -> MoEModel:
    return MoEModel(name=f"t-M{d_model}-L{seq_len}-B{micro_batch}", layers=2, d_model=d_model, heads=8,
                    seq_len=seq_len, micro_batch=micro_batch, ffn_hidden=2 * d_model, experts=N * G, top_k=2)


def test_bytes_per_hop() -> None:
    B = 8 * 2**20
    (flat,) = work.a2a_hops(B, N, G, "world", hierarchical=False)
    intra, inter = work.a2a_hops(B, N, G, "world", hierarchical=True)
    assert (intra.scope, inter.scope, flat.scope) == ("intra", "inter", "world")
    assert intra.buffer_bytes == inter.buffer_bytes == flat.buffer_bytes == B  # each hop moves a full buffer
    assert intra.off_node_bytes == 0.0 and intra.off_gpu_bytes == pytest.approx(B * (G - 1) / G)
    assert inter.off_node_bytes == pytest.approx(flat.off_node_bytes) == pytest.approx(B * (N - 1) / N)
    assert (flat.peers, intra.peers, inter.peers) == (N * G - 1, G - 1, N - 1)
    assert inter.message_bytes == pytest.approx(G * flat.message_bytes)  # aggregated: G x larger messages


def test_graph_prices_each_hop_by_its_bytes() -> None:
    m, p = _model(1024, 512, 2), _profile()
    g = build(m, CLUSTER, p, Knobs.uniform(m.layers, 1, a2a="hierarchical"))
    B = work.a2a_bytes(m, m.tokens)
    hops = [a for _, a in g.nodes(data=True) if a.get("op") == "all_to_all"]
    assert {a["hop"] for a in hops} == {"intra", "inter"}
    for a in hops:
        assert a["work"] == B
        assert a["duration_us"] == pytest.approx(p.a2a_us(a["hop"], B))
        assert a["resource"] == ("comm_intra" if a["hop"] == "intra" else "comm_inter")


def _steps(m: MoEModel, p: Profile, cluster: Cluster = CLUSTER) -> tuple[float, float]:
    """List-scheduled steps (µs) at r=1 with a flat and with a hierarchical all-to-all."""
    out = []
    for a2a in ("flat", "hierarchical"):
        knobs = Knobs.uniform(m.layers, 1, grad_chunk_bytes=None, grad_sync="after_backward", a2a=a2a)
        out.append(evaluate(m, cluster, p, Schedule("t", knobs, seq_priority)).step_us)
    return out[0], out[1]


def test_hierarchical_wins_on_many_small_messages_across_nodes() -> None:
    m = _model(256, 128, 1)  # 128 tokens: 64 KiB per rank, 2 KiB per flat message to 31 peers
    flat, hier = _steps(m, _profile())
    assert hier < 0.8 * flat
    assert solve(m, CLUSTER, _profile()).schedule.knobs.a2a == "hierarchical"


@pytest.mark.parametrize("d_model", [1024, 4096])
def test_hierarchical_loses_with_few_peers_per_node(d_model: int) -> None:
    """Measured 2 nodes x 2 GPUs: the inter hop sends the flat all-to-all's off-node bytes
    to 1 peer instead of 2 (little latency to save), so the extra intra hop makes it slower."""
    p = Profile.load("h200x4-2nodes")
    cluster = Cluster(2, 2)
    m = MoEModel(name="t", layers=2, d_model=d_model, heads=8, seq_len=1024, micro_batch=4, ffn_hidden=2 * d_model,
                 experts=4, top_k=2)
    flat, hier = _steps(m, p, cluster)
    assert hier > flat
