"""``moesched clusters``: the shipped network presets (``--network`` of solve, simulate, sweep)."""
from __future__ import annotations

import argparse

from moesched.commands.models import format_table
from moesched.network import DEFAULT_BY_GPU, load_network, preset_names

HELP = "list the network presets that describe clusters beyond the profiled machine"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sources", action="store_true", help="also print where each preset's numbers come from")


def run(args: argparse.Namespace) -> int:
    defaults = {name: gpu for gpu, name in DEFAULT_BY_GPU}
    rows, sources = [], []
    for name in preset_names():
        n = load_network(name)
        intra = f"{n.intra.bandwidth_GBps:g} GB/s, {n.intra.latency_us:g} µs" if n.intra else "profile's node"
        rows.append([n.name, n.gpu, str(n.gpus_per_node), intra,
                     f"{n.inter.nics_per_node} x {n.inter.nic_bandwidth_Gbps:g} Gb/s, {n.inter.latency_us:g} µs",
                     f"{n.oversubscription:g}:1", defaults.get(n.name, "")])
        sources.append(f"{n.name}: {n.description}. Source: {n.source}")
    print(format_table(["preset", "gpu", "gpus/node", "intra-node (per GPU)", "inter-node (per node)",
                        "oversubscription", "default for"], rows, [False, False, True, False, False, True, False]))
    if args.sources:
        print("\n".join(sources))
    return 0
