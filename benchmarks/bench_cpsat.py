"""Heuristic list schedules vs the CP-SAT optimum on small instances (fixed knobs).

Instances: one and two layers of a few ScheMoE-grid shapes, r in {2, 3, 4} (for r=3
the sequence is 1536 tokens so that 3 divides them), gradients in 4 chunks per group.
The heuristic is moesched's: the best list schedule over the solver's priority rules
(:class:`moesched.solve.rules.Rule`) for those knobs; the seq (creation-order) list
schedule is shown too. Interference 1.0 everywhere (CP-SAT cannot model it).

    python benchmarks/bench_cpsat.py [--profile FILE] [--time-limit S]

Goal: mean gap <= 2%.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moesched.cluster import Cluster  # noqa: E402
from moesched.graph import build  # noqa: E402
from moesched.knobs import Knobs  # noqa: E402
from moesched.models import MoEModel  # noqa: E402
from moesched.profile import Profile  # noqa: E402
from moesched.solve import cpsat  # noqa: E402
from moesched.solve.rules import Rule  # noqa: E402
from moesched.work import dense_grad_bytes  # noqa: E402

SHAPES = [  # (B, L, M, H, f) from the ScheMoE grid
    (2, 512, 1024, 2048, 1.2), (4, 1024, 2048, 4096, 1.0), (8, 512, 4096, 1024, 1.1), (2, 2048, 512, 8192, 1.2)]
RULES = [Rule(a, a, dw, lag) for a, dw, lag in
         itertools.product(("seq", "first"), ("inline", "layer", "end"), (None, 0))]


def best_rule(g, tick_us: float = cpsat.TICK_US) -> tuple[float, Rule]:
    """The solver's heuristic for fixed knobs: min over rules of the list-schedule makespan."""
    out = [(cpsat.heuristic_ticks(g, r(g), tick_us)[0] * tick_us, r) for r in RULES]
    return min(out, key=lambda x: x[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="profiles/analytic-h200x4-nvlink.json")
    ap.add_argument("--time-limit", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    profile = Profile.load(args.profile)
    cluster = Cluster(profile.nodes, profile.gpus_per_node)
    gaps, seq_gaps = [], []
    print(f"{'instance':34s} {'tasks':>5s} {'seq us':>9s} {'heur us':>9s} {'cpsat us':>9s} {'bound':>9s} "
          f"{'status':>8s} {'gap %':>6s} {'s':>5s}")
    for (b, seq_len, m, h, f), layers, r in itertools.product(SHAPES, (1, 2), (2, 3, 4)):
        model = MoEModel(name=f"B{b}-L{seq_len}-M{m}-H{h}-f{f}", layers=layers, d_model=m, heads=8,
                         seq_len=seq_len * 3 // 2 if r == 3 else seq_len, micro_batch=b, ffn_hidden=h,
                         experts=cluster.world, top_k=2, capacity_factor=f)
        sp = max(1, dense_grad_bytes(model) * layers // 4)
        g = build(model, cluster, profile, Knobs.uniform(layers, r, grad_chunk_bytes=sp))
        seq_us = cpsat.heuristic_ticks(g)[0] * cpsat.TICK_US
        heur_us, rule = best_rule(g)
        res = cpsat.solve_order(g, rule(g), time_limit_s=args.time_limit, num_workers=args.workers)
        gap = heur_us / res.makespan_us - 1
        gaps.append(gap)
        seq_gaps.append(seq_us / res.makespan_us - 1)
        name = f"{model.name} x{layers} r{r}"
        print(f"{name:34s} {len(g):5d} {seq_us:9.1f} {heur_us:9.1f} {res.makespan_us:9.1f} "
              f"{res.lower_bound_us:9.1f} {res.status:>8s} {100 * gap:6.2f} {res.wall_s:5.1f}", flush=True)
    print(f"heuristic (best rule) gap: mean {100 * statistics.fmean(gaps):.2f}%  worst {100 * max(gaps):.2f}%  "
          f"(goal: mean <= 2%)")
    print(f"seq list schedule gap:     mean {100 * statistics.fmean(seq_gaps):.2f}%  worst {100 * max(seq_gaps):.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
