"""``moesched placement``: replay routing step by step under each expert-placement policy."""
from __future__ import annotations

import argparse
import math
import re

from moesched.commands.models import format_table
from moesched.commands.setup import add_cluster_arguments, check_command_outputs, resolve
from moesched.errors import MoeschedError
from moesched.fileio import write_atomic
from moesched.memory import GB, gpu_memory_bytes, rank_memory
from moesched.models import MoEModel
from moesched.placement_cost import PlacementCost
from moesched.placement_policies import PolicyConfig
from moesched.placement_replay import POLICIES, ReplayResult, replay, zipf_loads
from moesched.profile import default_profile_path

HELP = "replay routing step by step under each expert-placement policy (FlexMoE, EPLB, ...)"
MAX_STEPS = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model preset (see `moesched models`)")
    parser.add_argument("--profile", default=None,
                        help=f"profile JSON file or shipped profile name (default {default_profile_path().name})")
    add_cluster_arguments(parser, example="4x8 or 32x8")
    parser.add_argument("--routing", required=True, metavar="TRACE|zipf:S",
                        help="a routing trace (JSON lines), or zipf:S for drifting Zipf loads of exponent S")
    parser.add_argument("--steps", type=int, default=200, help="steps of a zipf workload (default 200)")
    parser.add_argument("--drift-steps", type=float, default=200.0,
                        help="zipf: steps for the popularity order to move by one place (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="zipf: random seed (default 0)")
    parser.add_argument("--layers", type=int, default=None, help="replay only this many layers of the model")
    parser.add_argument("--policies", default="all", help=f"comma list of {', '.join(POLICIES)}, or 'all'")
    parser.add_argument("--interval", type=int, default=50, help="steps between placement decisions (default 50)")
    parser.add_argument("--threshold", type=float, default=1.2,
                        help="balance ratio (max/mean rank load) that triggers FlexMoE (default 1.2)")
    parser.add_argument("--capacity-factor", type=float, default=1.25,
                        help="capacity factor of the dropping policy (default 1.25)")
    parser.add_argument("--slots", type=int, default=1, help="extra expert slots per rank and layer (default 1)")
    parser.add_argument("--csv", default=None, help="write per-step rows (policy, step, step_us, balance, ...)")
    parser.add_argument("--png", default=None, help="write a plot of step time and balance ratio over the steps")
    parser.add_argument("--schedule-out", default=None, metavar="PATH",
                        help="write the placements one policy chose, by step (executor.placecheck --schedule runs it)")
    parser.add_argument("--schedule-policy", default="moesched", help="the policy of --schedule-out (default moesched)")


def _policies(text: str) -> list[str]:
    if text.strip() == "all":
        return list(POLICIES)
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in POLICIES]
    if not names or bad:
        raise MoeschedError(f"--policies: unknown {bad or text!r}; known: {', '.join(POLICIES)} or 'all'")
    return names


def _loads(args: argparse.Namespace, model: MoEModel, cost: PlacementCost) -> tuple[list, str]:
    """(loads[step][layer][expert], a label) from ``--routing``."""
    m = re.fullmatch(r"zipf:([0-9.]+)", args.routing.strip())
    if m:
        if not 1 <= args.steps <= MAX_STEPS:
            raise MoeschedError(f"--steps must be between 1 and {MAX_STEPS}, got {args.steps}")
        if not 0 < args.drift_steps < math.inf:
            raise MoeschedError(f"--drift-steps must be positive and finite, got {args.drift_steps}")
        if args.seed < 0:
            raise MoeschedError(f"--seed must be >= 0, got {args.seed}")
        s = float(m.group(1))
        loads = zipf_loads(model.experts, model.layers, args.steps, cost.sent_copies * cost.ranks, s,
                           seed=args.seed, drift_steps=args.drift_steps, top_k=model.top_k)
        return loads, f"drifting Zipf s={s:g}, {args.steps} steps, one place per {args.drift_steps:g} steps"
    if args.routing.startswith("zipf"):
        raise MoeschedError(f"--routing {args.routing!r}: expected zipf:S with S a number >= 0, e.g. zipf:1.2")
    from moesched.placement_trace import trace_loads
    return trace_loads(args.routing, model, cost.ranks)


def check_replica_memory(model: MoEModel, cost: PlacementCost, slots_extra: int, capacity_bytes: int) -> None:
    """One-line error when the extra slots (parameters, gradients and Adam state of a replica
    in every layer) push a rank's memory (:func:`moesched.memory.rank_memory`) over the GPU."""
    base = rank_memory(model, cost.cluster).total_bytes
    extra = slots_extra * len(model.moe_layers) * cost.replica_memory_bytes
    if base + extra > capacity_bytes:
        raise MoeschedError(f"--slots {slots_extra}: replicas need {extra / GB:.1f} GB per rank on top of "
                            f"{base / GB:.1f} GB, over the GPU's {capacity_bytes / GB:.1f} GB")


def run(args: argparse.Namespace) -> int:
    check_command_outputs(args, {"--csv": args.csv, "--png": args.png, "--schedule-out": args.schedule_out},
                          {"--routing": None if args.routing.startswith("zipf") else args.routing})
    names = _policies(args.policies)
    if args.schedule_out and args.schedule_policy not in names:
        raise MoeschedError(f"--schedule-policy {args.schedule_policy!r} is not among the replayed policies "
                            f"({', '.join(names)})")
    cfg = PolicyConfig(args.interval, args.threshold, args.capacity_factor)
    if not 0 <= args.slots <= 1024:
        raise MoeschedError(f"--slots must be between 0 and 1024 extra slots, got {args.slots}")
    model, profile, cluster = resolve(args)
    cost = PlacementCost(model, cluster, profile)
    check_replica_memory(model, cost, args.slots, gpu_memory_bytes(profile.hardware))
    loads, label = _loads(args, cost.model, cost)
    slots = model.experts // cost.ranks + args.slots
    dense = f" (its {cost.model.layers} MoE layers placed)" if model.dense_layers else ""
    print(f"model {model.name}{dense}, {cluster.label()} (EP {cost.ranks}), {slots} slots per rank and layer, "
          f"profile {profile.name}; routing: {label}")
    res, ideal = replay(loads, cost, slots, names, cfg)
    print(format_table(*table(res, ideal)))
    if args.csv:
        write_atomic(args.csv, csv_text(res))
        print(f"per-step rows written to {args.csv}")
    if args.schedule_out:
        from moesched.placement_schedule import PlacementSchedule
        r = res[args.schedule_policy]
        PlacementSchedule(r.policy, tuple(r.changes)).save(args.schedule_out)
        print(f"placements of {r.policy} ({len(r.changes)} changes) written to {args.schedule_out}")
    if args.png:
        from moesched.placement_figure import replay_figure
        from moesched.figures import save_png
        save_png(replay_figure(res, f"{model.name} on {cluster.label()}: {label}"), args.png)
        print(f"plot written to {args.png}")
    return 0


def table(res: dict[str, ReplayResult], ideal: ReplayResult) -> tuple[list[str], list[list[object]]]:
    """Headers and rows of the printed table (one row per policy, then the ideal)."""
    headers = ["policy", "total (s)", "mean step (ms)", "p90 step (ms)", "balance before", "balance after",
               "of ideal", "replica mem (GB)", "migrations", "dropped copies"]
    rows: list[list[object]] = []
    for r in list(res.values()) + [ideal]:
        n = len(r.step_us)
        rows.append([r.policy, f"{r.total_us / 1e6:.3f}", f"{r.mean_step_us / 1e3:.2f}", f"{r.p90_step_us / 1e3:.2f}",
                     f"{sum(r.balance_before) / n:.3f}" if r.balance_before else "-", f"{sum(r.balance) / n:.3f}",
                     f"{ideal.total_us / r.total_us:.1%}", f"{r.replica_memory_bytes / GB:.2f}", r.migrations,
                     f"{r.dropped:.0f}"])
    return headers, rows


def csv_text(res: dict[str, ReplayResult]) -> str:
    lines = ["policy,step,step_us,balance,balance_before,migrated"]
    for r in res.values():
        moved = set(r.migration_steps)
        lines += [f"{r.policy},{t},{us:.3f},{b:.5f},{bb:.5f},{int(t in moved)}"
                  for t, (us, b, bb) in enumerate(zip(r.step_us, r.balance, r.balance_before))]
    return "\n".join(lines) + "\n"
