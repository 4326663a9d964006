"""Measured expert-state move against the link price (CPU side of benchmarks/gpu_placement.sh).

    python benchmarks/placement_move_report.py PROFILE_WITH_MOVE.json [--model DeepSeek-V2-Lite]

For 1 and 4 experts' state of the model (parameters + Adam moments + fp32 master copy):
the measured device -> host -> device copy (``meta.expert_move``), and the price of a
migration of the same bytes inside a node (the profile's intra-node link plus the copy's
fixed cost per expert, :meth:`moesched.placement_cost.PlacementCost.move_us`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moesched.cluster import Cluster  # noqa: E402
from moesched.errors import MoeschedError  # noqa: E402
from moesched.models import MoEModel  # noqa: E402
from moesched.placement_cost import MOVE_KEY, PlacementCost  # noqa: E402
from moesched.profile import Profile  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile")
    ap.add_argument("--model", default="DeepSeek-V2-Lite")
    a = ap.parse_args()
    try:
        p = Profile.load(a.profile)
        cost = PlacementCost(MoEModel.from_name(a.model), Cluster(p.nodes, p.gpus_per_node), p)
    except MoeschedError as e:
        print(f"moesched: error: {e}", file=sys.stderr)
        return 2
    if cost.measured_move is None:
        print(f"moesched: error: {a.profile} has no meta.{MOVE_KEY}; run executor.placemove first", file=sys.stderr)
        return 2
    print(p.meta.get(f"{MOVE_KEY}_how", ""))
    for k in (1, 4):
        b = k * cost.expert_state_bytes
        meas, move = cost.measured_move(b), cost.move_us(b, False, moves=k)
        print(f"{k} expert(s), {b / 1e6:.1f} MB: copy via host {meas / 1e3:.3f} ms ({b / meas / 1e3:.1f} GB/s); "
              f"a migration inside a node {move / 1e3:.3f} ms ({b / move / 1e3:.1f} GB/s: the link, plus "
              f"{cost.measured_move.alpha_us:.1f} µs per expert)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
