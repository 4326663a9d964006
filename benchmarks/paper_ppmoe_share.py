"""Pipeline MoE's all-to-all share claim, DPMoE against PPMoE, in simulation.

    python benchmarks/paper_ppmoe_share.py [--micro-batch 16] [--efficiency 1.0]

Published (shared/papers/flexmoe_ppmoe_findep.md §2; 32 V100, 4 nodes x 8, NVLink inside,
100 Gb/s InfiniBand between, 64 experts, top-1): the communication share of the forward
falls from 65.5% (DPMoE, two all-to-alls per MoE layer over the 32 ranks) to 20.7% (PPMoE,
TP8 x PP4), and the MoE forward's share of the forward from 82.6% to 38.2%.

Simulated: DPMoE as in ``benchmarks/paper_ppmoe_breakdown.py`` (same model, cluster,
V100 profile and assumptions; EP 32, flat all-to-all). PPMoE is moesched's layout
``Layout(tp=8)`` (:mod:`moesched.layouts`, :mod:`moesched.layoutgraph`) on the same
cluster and global batch: a TP group of 8 ranks (one node) runs 8 micro-batches; per
layer the attention all-reduce and the MoE all-reduce of [8 x tokens, M] over NVLink, no
all-to-all; the router replicated on 8 x tokens. The 16 dense layers are TP layers too:
attention and a TP FFN with the same FLOPs per rank as the top-1 experts and the same
two all-reduces. Pipeline parallelism (PP4) is not modelled: its point-to-point sends
are small against these all-reduces, and the bubble is not communication.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from paper_ppmoe_breakdown import V100_PEAK_FLOPS, breakdown, v100_node_profile  # noqa: E402

from moesched.cluster import Cluster  # noqa: E402
from moesched.layoutgraph import build  # noqa: E402
from moesched.layouts import Layout, group_tokens  # noqa: E402
from moesched.models import MoEModel  # noqa: E402
from moesched.network import load_network  # noqa: E402
from moesched.sim import simulate  # noqa: E402

PUBLISHED = {"dpmoe_comm_share": 0.655, "ppmoe_comm_share": 0.207, "dpmoe_moe_share": 0.826,
             "ppmoe_moe_share": 0.382}


def ppmoe(micro_batch: int, efficiency: float) -> dict[str, float]:
    """Forward of rank 0 under PPMoE TP8 (ms by part and shares)."""
    model = MoEModel(name="PPMoE-143B", layers=16, d_model=4096, heads=32, seq_len=2048, micro_batch=micro_batch,
                     ffn_hidden=16384, experts=64, top_k=1, capacity_factor=None, expert_kind="gpt", dtype="fp16")
    lay = Layout(tp=8)
    g = build(model, Cluster(4, 8, network=load_network("v100-ib100")), v100_node_profile(efficiency), lay)
    df = simulate(g).df
    fwd = df[(df["phase"] == "fwd") & (df["kind"] != "loss")]
    ms = (fwd["end_us"] - fwd["start_us"]) / 1e3
    by = {k: float(v) for k, v in ms.groupby(fwd["task"].str.split(".").str[-1]).sum().items()}
    attn = float(ms[fwd["kind"] == "attn_fwd"].sum())
    expert = float(ms[fwd["kind"] == "expert_fwd"].sum())
    ar_attn, ar_moe = by.get("attn", 0.0), by.get("moe", 0.0)
    us_per_flop = 1e6 / (V100_PEAK_FLOPS * efficiency)
    gating = 16 * group_tokens(model, lay) * 2.0 * model.d_model * model.experts * us_per_flop / 1e3
    moe_layers = attn + ar_attn + expert + ar_moe
    dense_layers = (attn - gating) + ar_attn + expert + ar_moe  # attention, TP FFN, two all-reduces
    total = moe_layers + dense_layers
    moe = gating + expert + ar_moe
    return {"forward_ms": total, "tp_ar_ms": 2 * (ar_attn + ar_moe), "moe_ar_ms": ar_moe, "expert_ms": expert,
            "gating_ms": gating, "comm_share": 2 * (ar_attn + ar_moe) / total, "moe_ar_share": 2 * ar_moe / total,
            "moe_share": moe / total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--efficiency", type=float, default=1.0, help="fraction of 125 TFLOP/s the GEMMs reach")
    a = ap.parse_args()
    dp, pp = breakdown(a.micro_batch, a.efficiency), ppmoe(a.micro_batch, a.efficiency)
    print(f"6.7B-to-143B, 32 x V100 (4x8, v100-ib100), top-1, 64 experts, micro-batch {a.micro_batch} x 2048 "
          f"tokens per rank, GEMMs at {a.efficiency:g} x 125 TFLOP/s; forward of rank 0")
    print(f"{'quantity':<44} {'published':>10} {'simulated':>10}")
    rows = (("DPMoE all-to-all / forward", PUBLISHED["dpmoe_comm_share"], dp["a2a_share_of_forward"]),
            ("PPMoE TP all-reduces / forward", PUBLISHED["ppmoe_comm_share"], pp["comm_share"]),
            ("PPMoE MoE all-reduces only / forward", None, pp["moe_ar_share"]),
            ("DPMoE MoE forward / forward", PUBLISHED["dpmoe_moe_share"], dp["moe_share_of_forward"]),
            ("PPMoE MoE forward / forward", PUBLISHED["ppmoe_moe_share"], pp["moe_share"]))
    for label, pub, sim in rows:
        p = f"{100 * pub:9.1f}%" if pub is not None else f"{'-':>10}"
        print(f"{label:<44} {p} {100 * sim:9.1f}%")
    print(f"forward: DPMoE {dp['forward_ms']:.0f} ms (all-to-alls {dp['a2a_ms']:.0f}), PPMoE {pp['forward_ms']:.0f} ms "
          f"(TP all-reduces {pp['tp_ar_ms']:.0f}, experts {2 * pp['expert_ms']:.0f} incl. TP FFNs, "
          f"gating {pp['gating_ms']:.0f}); forward speedup {dp['forward_ms'] / pp['forward_ms']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
