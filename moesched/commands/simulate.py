"""``moesched simulate``: predict the step time of each schedule policy on a profile."""
from __future__ import annotations

import argparse
import sys

from moesched import schedules
from moesched.cluster import Cluster
from moesched.commands.models import format_table
from moesched.commands.setup import add_cluster_arguments, check_command_outputs, resolve
from moesched.commands.routing import add_routing_arguments, check_routing, print_routing_table
from moesched.errors import MoeschedError
from moesched.graph import check_memory
from moesched.models import MoEModel
from moesched.profile import Profile, default_profile_path
from moesched.schedules.base import Evaluation, evaluate, executed_timeline
from moesched.sim import Timeline
from moesched.costs.check import pricing_note

HELP = "simulate one training step under each schedule policy"
BASELINE = "vanilla"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model preset (see `moesched models`)")
    parser.add_argument("--profile", default=None,
                        help=f"profile JSON file or shipped profile name (default {default_profile_path().name})")
    add_cluster_arguments(parser)
    parser.add_argument("--layers", type=int, default=None, help="override the preset's number of layers")
    parser.add_argument("--schedules", default="all", help="comma list of policies, or 'all' (default)")
    parser.add_argument("--trace", default=None, help="write a Chrome trace (Perfetto) of the fastest schedule")
    parser.add_argument("--png", default=None, help="write a Gantt chart PNG of the fastest schedule vs vanilla")
    add_routing_arguments(parser)


def _evaluate(name: str, model: MoEModel, cluster: Cluster, profile: Profile) -> Evaluation:
    sched = schedules.get(name).schedule(model, cluster, profile)
    return evaluate(model, cluster, profile, sched)


def _schedule_names(text: str) -> list[str]:
    """The policies of ``--schedules``: a non-empty comma list of known names, or 'all'."""
    if text.strip() != "all" and not [x for x in text.split(",") if x.strip()]:
        raise MoeschedError(f"--schedules names no policy ({text!r}); give a comma list such as "
                            f"vanilla,tutel or 'all'")
    return schedules.parse_list(text.strip())


def run(args: argparse.Namespace) -> int:
    check_command_outputs(args, {"--trace": args.trace, "--png": args.png})
    names = _schedule_names(args.schedules)
    model, profile, cluster = resolve(args)
    check_routing(args, model)
    note = "analytic: derived from hardware ceilings, NOT measured" if profile.kind == "analytic" else "measured"
    print(f"profile: {profile.name} ({note}) from {args.profile if args.profile is not None else default_profile_path()}")
    print(f"model: {model.name}, cluster {cluster.label()} (EP {cluster.ep_size}, {cluster.world} ranks)")
    print(pricing_note(profile, model))
    try:
        check_memory(model, cluster, profile)
    except MoeschedError as e:
        print(f"moesched: warning: {e}; simulating anyway", file=sys.stderr)

    evals: dict[str, Evaluation] = {}
    for name in ([BASELINE] if BASELINE not in names else []) + names:
        evals[name] = _evaluate(name, model, cluster, profile)
    # The one step time: each schedule as the executor runs it (host model when the profile
    # has host costs); the list-scheduled step on GPU costs alone only in a labelled column.
    steps = {n: executed_timeline(model, cluster, profile, ev) for n, ev in evals.items()}
    host = profile.host is not None
    print(_table(names, evals, steps, host))
    best = min(names, key=lambda n: steps[n].makespan_us)
    print(f"fastest: {best} ({steps[best].makespan_us / 1e3:.3f} ms{', host model' if host else ''})")
    if args.routing:
        print_routing_table(args, model, cluster, profile, names)
    if args.trace or args.png:
        from moesched.trace import gantt_png, write_chrome_trace
        if args.trace:
            write_chrome_trace(steps[best], args.trace, label=best)
            print(f"trace of {best} written to {args.trace}")
        if args.png:
            shown = {best: steps[best]}
            if len(names) > 1 and best != BASELINE:
                shown[BASELINE] = steps[BASELINE]
            title = f"{model.name} on {cluster.label()} ({profile.name}), rank 0: " + " vs ".join(shown)
            gantt_png(shown, args.png, title)
            print(f"Gantt chart of {' vs '.join(shown)} written to {args.png}")
    return 0


def _table(names: list[str], evals: dict[str, Evaluation], steps: dict[str, Timeline], host: bool) -> str:
    """One row per schedule, the baseline first. ``step_ms (host model)``: the step as the
    executor runs it (:func:`moesched.schedules.base.executed_timeline`); exposed comm and
    compute busy are of that timeline (rank 0); ``GPU-only step_ms`` (with host costs only):
    list scheduling on GPU costs alone. ``speedup_vs_vanilla`` = vanilla's step / the row's
    step, host model (> 1 is faster)."""
    base_us = steps[BASELINE].makespan_us
    headers = ["schedule", "step_ms (host model)" if host else "step_ms (GPU costs)"] + (["GPU-only step_ms"] if host else []) \
        + ["speedup_vs_vanilla", "exposed comm_ms", "exposed %", "compute busy_ms"]
    rows = []
    for name in [BASELINE] + [n for n in names if n != BASELINE]:
        tl = steps[name]
        step, exposed = tl.makespan_us, tl.exposed_comm_us()
        busy = tl.busy_us().get("compute", 0.0)
        label = name if name in names else f"{name} (baseline)"
        rows.append([label, f"{step / 1e3:.3f}"] + ([f"{evals[name].step_us / 1e3:.3f}"] if host else [])
                    + [f"{base_us / step:.2f}x" if step > 0 else "-", f"{exposed / 1e3:.3f}",
                       f"{100 * exposed / step:.1f}" if step > 0 else "-", f"{busy / 1e3:.3f}"])
    return format_table(headers, rows, [False] + [True] * (len(headers) - 1))
