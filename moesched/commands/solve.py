"""``moesched solve``: search the schedule with the lowest predicted step time and write
its plan.

Prints the chosen knobs, the predicted step time and a table against every published
schedule; writes the plan (:mod:`moesched.plan`, order = simulated start order) and,
with ``--trace``, the predicted Chrome trace. Progress goes to stderr once a solve takes
longer than half a second.
"""
from __future__ import annotations

import argparse
import sys
import time

from moesched.commands.setup import check_command_outputs, check_time_limit, resolve
from moesched.plan import from_timeline
from moesched.profile import default_profile_path

HELP = "search knobs and task priorities for the fastest predicted step; write the plan"
QUIET_S = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model preset (see `moesched models`)")
    parser.add_argument("--layers", type=int, default=None, help="override the preset's number of layers")
    parser.add_argument("--profile", default=None,
                        help=f"profile JSON file or shipped profile name (default {default_profile_path().name})")
    parser.add_argument("--cluster", default=None,
                        help="NODESxGPUS[/epN], e.g. 2x2 (default: the profile's hardware layout)")
    parser.add_argument("--out", required=True, help="plan JSON to write")
    parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                        help="stop searching after S seconds and keep the best plan so far")
    parser.add_argument("--trace", default=None, help="write the predicted Chrome trace (Perfetto) here")


def _progress(t0: float):
    def say(msg: str) -> None:
        if time.perf_counter() - t0 > QUIET_S:
            print(f"moesched: solve: {msg}", file=sys.stderr, flush=True)
    return say


def run(args: argparse.Namespace) -> int:
    from moesched.solve.api import solve

    check_command_outputs(args, {"--out": args.out, "--trace": args.trace})
    check_time_limit(args.time_limit)
    model, profile, cluster = resolve(args)
    t0 = time.perf_counter()
    res = solve(model, cluster, profile, args.time_limit, _progress(t0))
    if res.timed_out:
        print(f"moesched: solve: time limit of {args.time_limit:g} s reached; returning the best plan found",
              file=sys.stderr)
    k = res.schedule.knobs
    note = "analytic: derived from hardware ceilings, NOT measured" if profile.kind == "analytic" else "measured"
    print(f"profile: {profile.name} ({note})")
    print(f"model: {model.name} ({model.layers} layers), cluster {cluster.label()} (EP {cluster.ep_size})")
    print(f"knobs: r_fwd={_degrees(k.r_fwd)} r_bwd={_degrees(k.r_bwd)} at_chunked={k.at_chunked} "
          f"grad_chunk_bytes={k.grad_chunk_bytes} grad_sync={k.grad_sync} a2a={k.a2a}")
    print(f"priority: {res.schedule.notes.get('priority')} (found by {res.schedule.notes.get('source')})")
    host = profile.host is not None
    print(f"predicted step: {res.executed_us / 1e3:.3f} ms"
          + (f" as executed (host model; {res.step_us / 1e3:.3f} ms on GPU costs alone)" if host else "")
          + f"  ({res.stats['simulations']} simulations, {time.perf_counter() - t0:.2f} s)")
    print(_table(res.table, res.step_us, res.executed_us, host))
    plan = from_timeline("moesched", model, cluster, k, res.evaluation.timeline, profile,
                         {"priority": res.schedule.notes.get("priority"), "source": res.schedule.notes.get("source"),
                          "executed_step_us": round(res.executed_us, 3)})
    plan.save(args.out)
    print(f"plan written to {args.out}")
    if args.trace:
        try:
            from moesched.trace import write_chrome_trace
        except ImportError:
            print("moesched: solve: moesched.trace is not available; no trace written", file=sys.stderr)
        else:
            write_chrome_trace(res.evaluation.timeline, args.trace, label="moesched")
            print(f"predicted trace written to {args.trace}")
    return 0


def _degrees(rs: tuple[int, ...]) -> str:
    return str(rs[0]) if len(set(rs)) == 1 else ",".join(map(str, rs))


def _table(rows: list[dict], step_us: float, executed_us: float, host: bool) -> str:
    """Steps in ms; with host costs, the executed step (host model) first, the list-scheduled
    step on GPU costs beside it; speedups compare executed steps."""
    if not host:
        lines = [f"{'schedule':10s} {'step (ms)':>10s} {'moesched speedup':>17s}",
                 f"{'moesched':10s} {step_us / 1e3:10.3f} {'1.00x':>17s}"]
    else:
        lines = [f"{'schedule':10s} {'step (ms)':>10s} {'GPU only (ms)':>14s} {'moesched speedup':>17s}",
                 f"{'moesched':10s} {executed_us / 1e3:10.3f} {step_us / 1e3:14.3f} {'1.00x':>17s}"]
    for r in rows:
        if r["step_us"] is None:
            lines.append(f"{r['policy']:10s} {'-':>10s} " + (f"{'-':>14s} " if host else "") + f"{'(cannot run)':>17s}")
        elif host:
            lines.append(f"{r['policy']:10s} {r['executed_us'] / 1e3:10.3f} {r['step_us'] / 1e3:14.3f} "
                         f"{r['speedup']:16.2f}x")
        else:
            lines.append(f"{r['policy']:10s} {r['step_us'] / 1e3:10.3f} {r['speedup']:16.2f}x")
    return "\n".join(lines)
