"""Held-out check (a) of the cluster model on any multi-node profile: the tiers calibrated
on its intra- and inter-node points price its whole-world points (held out)::

    python benchmarks/heldout_collectives.py [PROFILE] [--network h200x4-box] [--points]

PROFILE defaults to the shipped ``h200x4-2nodes``. Prints the mean and max |error| per
collective and over all; ``--points`` adds every point. Where the profile keeps each pass's
median (``moesched profile --comm-passes N``), each line also gives the floor: how far one
pass's median lies from the point's median (:mod:`moesched.collective_check`). Bad input:
one line, exit 2. CPU, a second.
"""
from __future__ import annotations

import argparse
import sys

from moesched.collective_check import held_out_world_points, summary_lines
from moesched.commands.models import format_table
from moesched.errors import MoeschedError
from moesched.network import load_network
from moesched.profile import Profile


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", nargs="?", default="h200x4-2nodes", help="a multi-node profile (file or shipped name)")
    ap.add_argument("--network", default="h200x4-box",
                    help="network preset or file for the tiers' hop latencies (default h200x4-box: the host "
                         "the shipped two-node profile was emulated on)")
    ap.add_argument("--points", action="store_true", help="print every point too")
    args = ap.parse_args(argv)
    try:
        points = held_out_world_points(Profile.load(args.profile), load_network(args.network))
    except MoeschedError as e:
        print(f"moesched: error: {e}", file=sys.stderr)
        return 2
    if args.points:
        rows = [[p.op, int(p.nbytes), f"{p.measured_us:.1f}", f"{p.predicted_us:.1f}", f"{100 * p.err:+.1f}%",
                 f"{100 * p.floor:.1f}%" if p.floor is not None else "-"] for p in points]
        print(format_table(["collective", "bytes/rank", "measured us", "model us", "error", "floor"], rows,
                           [False] + [True] * 5))
    print(f"held-out whole-world points of {args.profile} (tiers from its intra and inter points, "
          f"network {args.network}):")
    print("\n".join(summary_lines(points)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
