"""Pipeline MoE's forward breakdown of DPMoE (Table 1), reproduced in simulation.

    python benchmarks/paper_ppmoe_breakdown.py [--micro-batch 16] [--efficiency 1.0]

Published (shared/papers/flexmoe_ppmoe_findep.md, Table 1, measured): the "6.7B-to-143B"
DPMoE model on 32 V100 SXM2 (4 nodes x 8, NVLink 300 GB/s inside a node, 100 Gb/s
InfiniBand between nodes), 64 experts, top-1: forward 7617 ms, of which the two
all-to-alls 4989 ms = 65.5% of forward and 79.2% of MoE forward; gating 2.1%.

Simulated here: the cluster is ``--cluster 4x8/ep32 --network v100-ib100`` (every rank
holds 2 of the 64 experts; flat all-to-all over all 32 ranks), priced by the cluster model
(:mod:`moesched.collectives`) calibrated on a V100 node profile built below. Stated
assumptions (the paper's text, as digested, does not give them):
- The model: GPT-3 6.7B backbone (d_model 4096, 32 heads, 32 layers, sequence 2048) with
  an MoE FFN (64 experts of 4 x 4096 hidden, GELU, top-1, no capacity limit) in every other
  layer: 16 MoE layers (6.7B + 16 x 64 x 134M = 144B parameters). moesched's model puts
  an MoE FFN in every layer, so it simulates the 16 MoE layers (each with its attention);
  the other 16 layers' attention and dense FFN are added to "others" at the same FLOP rate.
- Compute at ``--efficiency`` x 125 TFLOP/s (the paper's own F in its Eq. 2); the paper's
  tensor parallelism of the dense part (TP8) is not modelled: per GPU it does the same
  FLOPs, and its NVLink all-reduces are left out.
- ``--micro-batch`` samples of 2048 tokens per rank (not in the digest); the shares hardly
  depend on it once the all-to-alls are bandwidth-bound.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moesched import schedules, work  # noqa: E402
from moesched.cluster import Cluster  # noqa: E402
from moesched.models import MoEModel  # noqa: E402
from moesched.network import load_network  # noqa: E402
from moesched.profile import Cost, Profile  # noqa: E402
from moesched.schedules.base import evaluate  # noqa: E402

PUBLISHED = {"forward_ms": 7617.0, "a2a_share_of_forward": 0.655, "a2a_share_of_moe_forward": 0.792,
             "gating_share": 0.021, "moe_share_of_forward": 0.826}
V100_PEAK_FLOPS = 125e12


def v100_node_profile(efficiency: float) -> Profile:
    """One 8 x V100 NVLink node, analytic: compute at ``efficiency`` x 125 TFLOP/s plus a
    20 µs launch floor; intra-node collectives at the v100-ib100 preset's bus bandwidth."""
    net = load_network("v100-ib100")
    assert net.intra is not None
    us_per_flop = 1e6 / (V100_PEAK_FLOPS * efficiency)
    compute = {k: Cost(20.0, us_per_flop) for k in ("attn_fwd", "attn_bwd", "expert_fwd", "expert_dx", "expert_dw",
                                                     "shared_fwd", "shared_bwd")}
    link = Cost(20.0, 1.0 / net.intra.bytes_per_us)
    return Profile(name="analytic-v100x8", kind="analytic", description="ANALYTIC: 8 x V100 NVLink node",
                   hardware={"gpu": "Tesla V100-SXM2", "nodes": 1, "gpus_per_node": 8, "gpu_memory_bytes": 32 * 2**30,
                             "regime": "nvlink"}, meta={}, compute=compute,
                   comm={"all_to_all": {"intra": link}, "all_reduce": {"intra": link}})


def breakdown(micro_batch: int, efficiency: float) -> dict[str, float]:
    """Simulated forward of one step (rank 0, vanilla schedule: no overlap, as DPMoE), ms."""
    model = MoEModel(name="DPMoE-143B", layers=16, d_model=4096, heads=32, seq_len=2048, micro_batch=micro_batch,
                     ffn_hidden=16384, experts=64, top_k=1, capacity_factor=None, expert_kind="gpt", dtype="fp16")
    cluster = Cluster(4, 8, ep=32, network=load_network("v100-ib100"))
    profile = v100_node_profile(efficiency)
    ev = evaluate(model, cluster, profile, schedules.get("vanilla").schedule(model, cluster, profile))
    df = ev.timeline.df
    fwd = df[(df["rank"] == 0) & (df["phase"] == "fwd") & (df["kind"] != "loss")]
    by_kind = (fwd["end_us"] - fwd["start_us"]).groupby(fwd["kind"]).sum() / 1e3
    T = model.tokens
    us_per_flop = 1e6 / (V100_PEAK_FLOPS * efficiency)
    dense_layers_ms = 16 * (work.attn_fwd_flops(model, T) + T * 16.0 * model.d_model ** 2) * us_per_flop / 1e3
    gating_ms = 16 * T * 2.0 * model.d_model * model.experts * us_per_flop / 1e3
    a2a = float(by_kind.get("dispatch", 0.0) + by_kind.get("combine", 0.0))
    expert = float(by_kind.get("expert_fwd", 0.0))
    attn = float(by_kind.get("attn_fwd", 0.0))
    moe = a2a + expert + gating_ms
    total = a2a + expert + attn + dense_layers_ms
    return {"forward_ms": total, "a2a_ms": a2a, "dispatch_ms": float(by_kind.get("dispatch", 0.0)),
            "combine_ms": float(by_kind.get("combine", 0.0)), "expert_ms": expert, "gating_ms": gating_ms,
            "a2a_share_of_forward": a2a / total, "a2a_share_of_moe_forward": a2a / moe,
            "gating_share": gating_ms / total, "moe_share_of_forward": moe / total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--efficiency", type=float, default=1.0, help="fraction of 125 TFLOP/s the GEMMs reach")
    args = ap.parse_args()
    r = breakdown(args.micro_batch, args.efficiency)
    print(f"DPMoE 6.7B-to-143B, 32 x V100, 4x8/ep32 on v100-ib100, micro-batch {args.micro_batch} x 2048 tokens, "
          f"GEMMs at {args.efficiency:g} x 125 TFLOP/s")
    print(f"{'quantity':<28} {'published':>10} {'simulated':>10}")
    for key, label in (("a2a_share_of_forward", "all-to-all / forward"),
                       ("a2a_share_of_moe_forward", "all-to-all / MoE forward"),
                       ("moe_share_of_forward", "MoE forward / forward"), ("gating_share", "gating / forward")):
        print(f"{label:<28} {100 * PUBLISHED[key]:>9.1f}% {100 * r[key]:>9.1f}%")
    print(f"{'forward (ms)':<28} {PUBLISHED['forward_ms']:>10.0f} {r['forward_ms']:>10.0f}")
    print(f"simulated: dispatch {r['dispatch_ms']:.0f} ms, combine {r['combine_ms']:.0f} ms, experts "
          f"{r['expert_ms']:.0f} ms, gating {r['gating_ms']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
