"""Planning speed on large clusters: a 32-layer model on up to 1,024 GPUs.

    python benchmarks/bench_scale.py [--model Mixtral-8x7B] [--profile h200x4-nvlink]
                                     [--network dgx-h200] [--clusters 1x8/ep8,16x8/ep8,128x8/ep8]

Under even routing every rank runs the same tasks, so the simulator runs one
representative rank: the graph of one step has the same size at 8 and at 1,024 GPUs, and
the cluster enters through the collective prices (:mod:`moesched.collectives`). Per
cluster it prints the seconds to calibrate the cluster model and build the step's graph,
to simulate every published schedule once, and to solve (``moesched solve``'s search),
with the predicted steps as the executor issues them (host model, as ``moesched solve``
prints) and the gradient all-reduce time of one rank. Goal: a 1,024-GPU, 32-layer plan
in seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moesched import schedules  # noqa: E402
from moesched.cluster import Cluster, check_setup  # noqa: E402
from moesched.graph import build_compiled  # noqa: E402
from moesched.knobs import Knobs  # noqa: E402
from moesched.models import MoEModel  # noqa: E402
from moesched.network import load_network  # noqa: E402
from moesched.profile import Profile  # noqa: E402
from moesched.schedules.base import evaluate, executed_timeline  # noqa: E402
from moesched.solve.api import solve  # noqa: E402


def bench(model: MoEModel, cluster: Cluster, profile: Profile, zero: int) -> dict[str, float]:
    t0 = time.perf_counter()
    check_setup(model.experts, cluster, profile)
    c = build_compiled(model, cluster, profile, Knobs.uniform(model.layers, 1))
    t1 = time.perf_counter()
    steps = {}
    for name in schedules.POLICIES:
        ev = evaluate(model, cluster, profile, schedules.get(name).schedule(model, cluster, profile))
        steps[name] = executed_timeline(model, cluster, profile, ev).makespan_us
    t2 = time.perf_counter()
    res = solve(model, cluster, profile, zero=zero)
    t3 = time.perf_counter()
    grads = sum(d for d, k in zip(c._dur1, c.kind) if k == "grad_ar")  # one rank's durations (µs)
    return {"build_s": t1 - t0, "published_s": t2 - t1, "solve_s": t3 - t2, "tasks": float(len(c.dur)),
            "vanilla_ms": steps["vanilla"] / 1e3, "best_published_ms": min(steps.values()) / 1e3,
            "solved_ms": executed_timeline(model, cluster, profile, res.evaluation).makespan_us / 1e3, "grad_ar_ms": grads / 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Mixtral-8x7B")
    ap.add_argument("--profile", default="h200x4-nvlink")
    ap.add_argument("--network", default="dgx-h200")
    ap.add_argument("--clusters", default="1x8/ep8,16x8/ep8,128x8/ep8")
    ap.add_argument("--zero", type=int, default=1, choices=(0, 1, 2),
                    help="ZeRO stage of the memory check (default 1: Mixtral-8x7B needs it on H200)")
    args = ap.parse_args()
    model, profile, net = MoEModel.from_name(args.model), Profile.load(args.profile), load_network(args.network)
    print(f"{model.name} ({model.layers} layers), profile {profile.name}, network {net.name}, ZeRO-{args.zero}")
    print(f"{'cluster':>12} {'GPUs':>5} {'tasks':>6} {'build s':>8} {'7 published s':>14} {'solve s':>8} "
          f"{'vanilla ms':>11} {'best published ms':>18} {'solved ms':>10} {'grad AR ms':>11}")
    for text in args.clusters.split(","):
        cluster = replace(Cluster.parse(text), network=net)
        r = bench(model, cluster, profile, args.zero)
        print(f"{cluster.label():>12} {cluster.world:>5} {int(r['tasks']):>6} {r['build_s']:>8.2f} "
              f"{r['published_s']:>14.2f} {r['solve_s']:>8.2f} {r['vanilla_ms']:>11.1f} "
              f"{r['best_published_ms']:>18.1f} {r['solved_ms']:>10.1f} {r['grad_ar_ms']:>11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
