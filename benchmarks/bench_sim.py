"""Simulator speed: one 32-layer step with r = 8 in forward and backward.

    python benchmarks/bench_sim.py [--repeat 3] [--profile-sim]

LLaMA2-MoE (32 layers) on the analytic 1 x 4 H200 profile, attention unchunked, gradient
all-reduce in 64 KiB chunks so the graph has over 10,000 tasks. Goal: the simulation
(not the graph build) under 0.5 s on one core. ``--profile-sim`` prints a cProfile of
one simulation.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moesched.cluster import Cluster  # noqa: E402
from moesched.graph import build  # noqa: E402
from moesched.knobs import Knobs  # noqa: E402
from moesched.models import MoEModel  # noqa: E402
from moesched.profile import Profile  # noqa: E402
from moesched.sim import simulate  # noqa: E402

GOAL_S = 0.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="simulations to time; the best is reported")
    ap.add_argument("--grad-chunk-bytes", type=int, default=64 * 2**10)
    ap.add_argument("--profile-sim", action="store_true", help="cProfile one simulation")
    args = ap.parse_args()

    model = MoEModel.from_name("LLaMA2-MoE")
    profile = Profile.load("analytic-h200x4-nvlink")
    knobs = Knobs.uniform(model.layers, 8, at_chunked=False, grad_chunk_bytes=args.grad_chunk_bytes)
    t0 = time.perf_counter()
    g = build(model, Cluster(1, 4), profile, knobs)
    build_s = time.perf_counter() - t0
    n = g.number_of_nodes()
    print(f"model {model.name}: {model.layers} layers, r_fwd = r_bwd = 8, grad chunks of {args.grad_chunk_bytes} bytes")
    print(f"tasks: {n:,} ({g.number_of_edges():,} edges)")
    print(f"build: {build_s:.3f} s")

    times, tl = [], None
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        tl = simulate(g)
        times.append(time.perf_counter() - t0)
    sim_s = min(times)
    print(f"simulate: {sim_s:.3f} s (best of {len(times)}: {', '.join(f'{t:.3f}' for t in times)})")
    print(f"tasks per second: {n / sim_s:,.0f}")
    print(f"makespan: {tl.makespan_us / 1e3:.3f} ms, exposed comm {tl.exposed_comm_us() / 1e3:.3f} ms")
    print(f"goal simulate < {GOAL_S} s: {'met' if sim_s < GOAL_S else 'MISSED'}")
    if args.profile_sim:
        pr = cProfile.Profile()
        pr.enable()
        simulate(g)
        pr.disable()
        pstats.Stats(pr).sort_stats("cumulative").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
