"""``moesched sweep``: every published schedule and moesched's solution on each layer of a
published grid (ScheMoE's 675 or FSMoE's 1458 layers); CSV out, speedup summary printed.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time

from moesched.commands.setup import add_cluster_arguments, check_command_outputs, load_profile, network_note, resolve_cluster
from moesched.cluster import comm_model
from moesched.errors import MoeschedError
from moesched.fileio import write_atomic
from moesched.profile import default_profile_path

HELP = "solve every layer of a published grid and compare with every published schedule"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", required=True, choices=("schemoe675", "fsmoe1458"), help="layer grid")
    parser.add_argument("--profile", default=None,
                        help=f"profile JSON file or shipped profile name (default {default_profile_path().name})")
    add_cluster_arguments(parser)
    parser.add_argument("--out", default=None, help="CSV to write (one row per layer)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N grid entries")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes (default: min(2, CPUs); 1 = in this process)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from moesched.solve import grids, sweep

    check_command_outputs(args, {"--out": args.out})
    if args.workers is not None and not 1 <= args.workers <= 256:
        raise MoeschedError(f"--workers must be between 1 and 256, got {args.workers}")
    profile = load_profile(args)
    cluster = resolve_cluster(args, profile)
    comm_model(cluster, profile)  # the network can price this cluster
    if args.limit is not None and args.limit <= 0:
        raise MoeschedError(f"--limit must be positive, got {args.limit}")
    models = grids.grid(args.grid, cluster.world)[: args.limit]
    workers = args.workers if args.workers is not None else min(2, os.cpu_count() or 1)
    t0 = time.perf_counter()
    with tqdm(total=len(models), desc=args.grid, unit="layer", file=sys.stderr, leave=False, disable=None) as bar:
        rows, skipped = sweep.run(models, cluster, profile, workers, bar.update)
    elapsed = time.perf_counter() - t0
    note = "analytic: derived from hardware ceilings, NOT measured" if profile.kind == "analytic" else "measured"
    print(f"grid {args.grid}: {len(rows)} layers solved, {len(skipped)} skipped as infeasible on "
          f"{cluster.label()}, {elapsed:.1f} s ({workers} workers); profile {profile.name} ({note})")
    for name, why in skipped[:3]:
        print(f"  skipped {name}: {why}")
    note = network_note(args, cluster, profile)
    if note:
        print(note)
    if rows:
        print(sweep.format_summary(sweep.summary(rows)))
    if args.out:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["name"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_atomic(args.out, buf.getvalue())
        print(f"wrote {args.out}")
    return 0
