"""The layout ``moesched layouts`` chooses for every preset on 8x8 and 32x8 H200 clusters
(NVLink nodes, dgx-h200 network: 8 x 400 Gb/s NICs per node), with the predicted step of
each layout (GPU costs, list-scheduled; ms) or why it cannot run.

    python benchmarks/layouts_presets.py [--zero 1] [--time-limit 2] > results/bench/layouts_presets.txt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moesched.cluster import Cluster  # noqa: E402
from moesched.layoutchoice import compare_layouts  # noqa: E402
from moesched.errors import MoeschedError  # noqa: E402
from moesched.models import PRESETS  # noqa: E402
from moesched.network import load_network  # noqa: E402
from moesched.profile import Profile  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zero", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=2.0)
    ap.add_argument("--profile", default="h200x4-nvlink")
    a = ap.parse_args()
    p, net = Profile.load(a.profile), load_network("dgx-h200")
    print(f"profile {p.name}, network {net.name}, ZeRO-{a.zero}; step_ms per layout ('-': cannot run)")
    for nodes in (8, 32):
        c = Cluster(nodes, 8, network=net)
        print(f"\n{c.label()}:")
        print(f"{'preset':<18} {'chosen':<20} {'EP':>18} {'TP2':>8} {'TP2+SP':>8} {'TP4':>8} {'TP4+SP':>8} "
              f"{'TP8':>8} {'TP8+SP':>8}")
        for name, m in PRESETS.items():
            try:
                opts, chosen = compare_layouts(m, c, p, a.zero, a.time_limit)
            except MoeschedError as e:
                print(f"{name:<18} none runs: {str(e)[:100]}")
                continue
            cells = [f"{o.step_us / 1e3:.1f}" if o.step_us is not None else "-" for o in opts]
            ep = f"{cells[0]} (EP {opts[0].ep})" if opts[0].step_us is not None else "-"
            print(f"{name:<18} {chosen.label():<20} {ep:>18} " + " ".join(f"{x:>8}" for x in cells[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
