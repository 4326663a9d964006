"""Solver speed: per-layer solve time, the 675-layer sweep, a 64-layer model's plan.

    python benchmarks/bench_solver.py [--profile FILE] [--layers N] [--workers W]

Goals: one layer config < 20 ms on one core (average, including evaluating the seven
published policies), the ScheMoE 675 sweep < 60 s on 2 cores, a 64-layer plan < 5 s.
The per-layer time is split into "published" (building and evaluating the published
schedules, e.g. FlowMoE's own S_p tuning) and "search" (moesched's own work).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moesched.cluster import Cluster  # noqa: E402
from moesched.models import MoEModel  # noqa: E402
from moesched.plan import from_timeline  # noqa: E402
from moesched.profile import Profile, freeze_loaded  # noqa: E402
from moesched.solve import candidates, grids, search as search_mod, sweep  # noqa: E402
from moesched.solve.api import solve  # noqa: E402


def per_layer(profile: Profile, cluster: Cluster, n: int) -> None:
    rng = random.Random(0)
    models = rng.sample(grids.schemoe675(cluster.world), n)
    spent = [0.0]
    orig = candidates.published

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t
    search_mod.published = timed
    times, cpu = [], []
    try:
        for m in models:
            t, c = time.perf_counter(), time.process_time()
            search_mod.search(m, cluster, profile)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    finally:
        search_mod.published = orig
    total = statistics.fmean(times) * 1e3
    pub = spent[0] / n * 1e3
    print(f"per-layer solve ({n} ScheMoE layers, 1 core): mean {total:.1f} ms, median "
          f"{statistics.median(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms; of the mean: published "
          f"policies {pub:.1f} ms, moesched search {total - pub:.1f} ms; CPU time mean "
          f"{statistics.fmean(cpu) * 1e3:.1f} ms  (goal < 20 ms)")


def full_sweep(profile: Profile, cluster: Cluster, workers: int) -> None:
    models = grids.schemoe675(cluster.world)
    t = time.perf_counter()
    rows, skipped = sweep.run(models, cluster, profile, workers)
    dt = time.perf_counter() - t
    print(f"schemoe675 sweep: {len(rows)} layers, {len(skipped)} skipped, {dt:.1f} s with {workers} workers "
          f"(goal < 60 s)")
    print(sweep.format_summary(sweep.summary(rows)))


def big_model(profile: Profile, cluster: Cluster, layers: int) -> None:
    model = MoEModel.from_name("LLaMA2-MoE", layers=layers)
    t = time.perf_counter()
    res = solve(model, cluster, profile)
    plan = from_timeline("moesched", model, cluster, res.schedule.knobs, res.evaluation.timeline, profile)
    dt = time.perf_counter() - t
    best_pub = min(r.step_us for r in res.table if r.step_us is not None)
    print(f"{model.name} x{layers} layers: plan of {len(plan.order)} tasks in {dt:.2f} s (goal < 5 s); "
          f"step {res.step_us / 1e3:.3f} ms vs best published {best_pub / 1e3:.3f} ms "
          f"({best_pub / res.step_us:.3f}x), {res.stats['simulations']} simulations")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="profiles/analytic-h200x4-nvlink.json")
    ap.add_argument("--layers", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sample", type=int, default=100, help="layers timed one by one")
    ap.add_argument("--skip-sweep", action="store_true")
    args = ap.parse_args()
    profile = Profile.load(args.profile)
    freeze_loaded()  # as the CLI does once its profile is loaded
    cluster = Cluster(profile.nodes, profile.gpus_per_node)
    print(f"profile {profile.name}, cluster {cluster.label()}")
    per_layer(profile, cluster, args.sample)
    big_model(profile, cluster, args.layers)
    if not args.skip_sweep:
        full_sweep(profile, cluster, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
