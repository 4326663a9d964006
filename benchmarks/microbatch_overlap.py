"""Overlap across micro-batches on the slow regimes: for every preset whose batch splits into
>= 2 micro-batches, the step (ms, simulated, strict stream orders on GPU costs) of the best
single-micro-batch policy run micro-batch after micro-batch, Megatron-Core's combined 1F1B,
DeepSeek's DualPipe chunk pair, and moesched's cross-micro-batch plan
(:mod:`moesched.microbatch_search`); beside them the best policy on the whole batch in one
micro-batch (the small presets' kernels take about as long on 1 sample as on 8, so cutting
the batch costs more than the overlap wins back on them).

    PYTHONPATH=. python benchmarks/microbatch_overlap.py [--microbatches 2,4] [--presets A,B] [--cpsat S]

Regimes: the measured profiles ``h200x4-hostmem`` (all-to-all through host memory) and
``h200x4-2nodes`` (two nodes) on their own layouts; ``h200x4-nvlink`` costs on 2 x 8 H200
with the ``dgx-h200`` network cut to one NIC per node of 100 or 400 Gb/s, and as is
(8 x 400 Gb/s). With ``--cpsat S`` moesched's plan is refined by CP-SAT for S seconds
(:func:`moesched.microbatch_search.refine`: its order kept when faster with interference)
and a last column gives the plan's order against CP-SAT's proven lower bound on the same
graph at interference 1.0 ("opt" when CP-SAT proved its optimum). Prints a markdown table;
writes nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moesched.cluster import Cluster  # noqa: E402
from moesched.errors import MoeschedError  # noqa: E402
from moesched.microbatch_search import Plan, best_single, compare  # noqa: E402
from moesched.models import PRESETS  # noqa: E402
from moesched.network import InterTier, load_network  # noqa: E402
from moesched.profile import Profile  # noqa: E402


def regimes() -> list[tuple[str, Cluster, Profile]]:
    """(label, cluster, profile) of every slow regime."""
    out = []
    for name, label in (("h200x4-hostmem", "host memory 1x4"), ("h200x4-2nodes", "two nodes 2x2")):
        p = Profile.load(name)
        out.append((label, Cluster(p.nodes, p.gpus_per_node), p))
    p, net = Profile.load("h200x4-nvlink"), load_network("dgx-h200")
    for nics, gbps in ((1, 100.0), (1, 400.0), (8, 400.0)):
        n = replace(net, name=f"dgx-h200-{nics}x{gbps:g}", inter=InterTier(nics, gbps, net.inter.latency_us))
        out.append((f"2x8, {nics}x{gbps:g} Gb/s", Cluster(2, 8, network=n), p))
    return out


def _gap_cell(plan: Plan) -> str:
    """The CP-SAT gap cell of a row ("" without ``--cpsat``)."""
    g = plan.gap
    return "" if g is None else f" {100 * g.gap:.1f}%{' (opt)' if g.status == 'optimal' else ''} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--microbatches", default="2,4", help="comma list of micro-batch counts")
    ap.add_argument("--presets", default="", help="comma list (default: every preset with micro_batch >= 2)")
    ap.add_argument("--cpsat", type=float, default=0.0, metavar="S", help="CP-SAT seconds per row (0: no gap column)")
    a = ap.parse_args()
    counts = [int(x) for x in a.microbatches.split(",")]
    names = [x for x in a.presets.split(",") if x] or [n for n, m in PRESETS.items() if m.micro_batch >= 2]
    gap_head = (" gap to CP-SAT bound |", "---|") if a.cpsat > 0 else ("", "")
    print("| regime | preset | whole batch (policy) | m | best single (policy) | combined 1F1B | DualPipe | moesched "
          f"| vs single | vs 1F1B | moesched's order |{gap_head[0]}\n|---|---|---|---|---|---|---|---|---|---|---|{gap_head[1]}")
    t0 = time.perf_counter()
    for label, cluster, profile in regimes():
        for name in names:
            model = PRESETS[name]
            try:
                whole = best_single(model, cluster, profile, 1)[0]
                head = f"{whole.step_us / 1e3:.1f} ({whole.label})"
            except MoeschedError:
                head = "-"
            for m in counts:
                if model.micro_batch % m:
                    continue
                try:
                    r = compare(model, cluster, profile, m, a.cpsat)
                except MoeschedError as e:
                    print(f"| {label} | {name} | {head} | {m} | cannot run: {str(e)[:80]} | | | | | | |")
                    continue
                ms = {k: v.step_us / 1e3 for k, v in r.items()}
                print(f"| {label} | {name} | {head} | {m} | {ms['single']:.1f} ({r['single'].label}) | "
                      f"{ms['combined-1f1b']:.1f} | {ms['dualpipe']:.1f} | {ms['moesched']:.1f} | "
                      f"{ms['single'] / ms['moesched']:.2f}x | {ms['combined-1f1b'] / ms['moesched']:.2f}x | "
                      f"{r['moesched'].label} |" + _gap_cell(r['moesched']), flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
