"""``moesched solve``: search the schedule with the lowest predicted step time and write
its plan.

Every step time is the plan as the executor issues it (host model when the profile has
host costs; a labelled GPU-only column beside it). Prints the chosen knobs, the predicted
step time, a table against every published schedule and one row per expert-parallel
size considered (memory per rank, predicted step or why it does not fit, and why the chosen
EP wins: :mod:`moesched.solve.layout`); writes the plan
(:mod:`moesched.plan`, order = simulated start order) and, with ``--trace``, the predicted
Chrome trace (host model too). Progress goes to stderr once a solve takes longer than half
a second.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from moesched.commands import solve_inference
from moesched.commands.routing import add_routing_arguments, check_routing, choose_under_routing
from moesched.commands.setup import add_cluster_arguments, check_command_outputs, check_time_limit, resolve
from moesched.errors import MemoryRefusal, MoeschedError
from moesched.memory import GB, ZERO_STAGES
from moesched.pipelinechoice import print_pipelines
from moesched.pipelineplan import add_pipeline_arguments, pipeline_args_checked
from moesched.plan import from_timeline
from moesched.profile import default_profile_path
from moesched.costs.check import pricing_note

if TYPE_CHECKING:
    from moesched.solve.api import PolicyRow
    from moesched.solve.layout import LayoutResult

HELP = "search knobs and task priorities for the fastest predicted step; write the plan"
QUIET_S = 0.5
#: How the printed step time was predicted (the one definition of step time: the host model).
STEP_HOST = "(host model: the plan as the executor issues it)"
STEP_GPU = "(GPU costs; this profile has no host costs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model preset (see `moesched models`)")
    parser.add_argument("--layers", type=int, default=None, help="override the preset's number of layers")
    parser.add_argument("--profile", default=None,
                        help=f"profile JSON file or shipped profile name (default {default_profile_path().name})")
    add_cluster_arguments(parser)
    parser.add_argument("--zero", type=int, default=0, choices=ZERO_STAGES,
                        help="ZeRO stage of the memory model: 0 none, 1 optimizer state sharded over "
                             "data-parallel ranks, 2 gradients too (default 0)")
    parser.add_argument("--out", required=True, help="plan JSON to write")
    parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                        help="stop searching after S seconds and keep the best plan so far")
    parser.add_argument("--trace", default=None, help="write the predicted Chrome trace (Perfetto) here")
    add_routing_arguments(parser)
    add_pipeline_arguments(parser)
    solve_inference.add_arguments(parser)


def _progress(t0: float):
    def say(msg: str) -> None:
        if time.perf_counter() - t0 > QUIET_S:
            print(f"moesched: solve: {msg}", file=sys.stderr, flush=True)
    return say


def run(args: argparse.Namespace) -> int:
    from moesched.solve.layout import solve_layout

    if args.mode == "inference":
        training_only = [f for f, on in (("--trace", args.trace is not None), ("--routing", args.routing is not None),
                                          ("--routing-chunks", args.routing_chunks), ("--pp", args.pp != 1),
                                          ("--microbatches", args.microbatches != 1), ("--zero", args.zero != 0)) if on]
        if training_only:
            raise MoeschedError(f"{', '.join(training_only)}: training only (not with --mode inference)")
        return solve_inference.run(args)
    if args.ag is not None or args.eg is not None:
        raise MoeschedError("--ag and --eg are for --mode inference")

    check_command_outputs(args, {"--out": args.out, "--trace": args.trace})
    check_time_limit(args.time_limit)
    model, profile, cluster = resolve(args, any_ep=True)
    pipeline_args_checked(args, model)
    check_routing(args, model)
    t0 = time.perf_counter()
    try:
        lay = solve_layout(model, cluster, profile, args.time_limit, _progress(t0), zero=args.zero)
    except MemoryRefusal as e:
        from moesched.layoutchoice import layouts_hint
        raise MemoryRefusal(f"{e}{layouts_hint(model, cluster, profile, args.zero)}") from None
    res, cluster = lay.result, lay.cluster
    if res.timed_out:
        print(f"moesched: solve: time limit of {args.time_limit:g} s reached; returning the best plan found",
              file=sys.stderr)
    k = res.schedule.knobs
    note = "analytic: derived from hardware ceilings, NOT measured" if profile.kind == "analytic" else "measured"
    print(f"profile: {profile.name} ({note})")
    print(f"model: {model.name} ({model.layers} layers), cluster {cluster.label()} (EP {cluster.ep_size})")
    print(pricing_note(profile, model))
    print(f"knobs: r_fwd={_degrees(k.r_fwd)} r_bwd={_degrees(k.r_bwd)} at_chunked={k.at_chunked} "
          f"grad_chunk_bytes={k.grad_chunk_bytes} grad_sync={k.grad_sync} a2a={k.a2a}")
    print(f"priority: {res.schedule.notes.get('priority')} (found by {res.schedule.notes.get('source')})")
    host = profile.host is not None
    print(f"predicted step: {res.executed_us / 1e3:.3f} ms " + (STEP_HOST if host else STEP_GPU)
          + f"  ({res.stats['simulations']} simulations, {time.perf_counter() - t0:.2f} s)")
    print(_table(res.table, res.step_us, res.executed_us, host))
    print(_layout_table(lay, host, args.zero))
    print_pipelines(args, model, cluster, profile)
    plan = from_timeline("moesched", model, cluster, k, res.evaluation.timeline, profile,
                         {"priority": res.schedule.notes.get("priority"), "source": res.schedule.notes.get("source")})
    if args.routing:
        plan = choose_under_routing(args, model, cluster, profile, plan)
    plan.save(args.out)
    print(f"plan written to {args.out}")
    if args.trace:
        try:
            from moesched.trace import write_chrome_trace
        except ImportError:
            print("moesched: solve: moesched.trace is not available; no trace written", file=sys.stderr)
        else:
            from moesched.schedules.base import executed_timeline
            write_chrome_trace(executed_timeline(model, cluster, profile, res.evaluation), args.trace, label="moesched")
            print(f"predicted trace written to {args.trace}")
    return 0


def _layout_table(lay: LayoutResult, host: bool, zero: int) -> str:
    """One row per EP candidate: expert-DP size, where the all-to-all runs, memory per rank
    (GB, ZeRO stage ``zero``), the predicted step (ms, as in the schedule table) or why it
    cannot run; then the reason for the choice."""
    head = f"{'EP':>4} {'expert-DP':>9} {'all-to-all':<16} {'memory GB/rank':>14} {'step_ms':>9}  note"
    lines = [f"layouts (ZeRO-{zero}; step_ms {'host model' if host else 'GPU costs'}):", head]
    for r in lay.rows:
        step = f"{r.result.executed_us / 1e3:9.3f}" if r.result is not None else f"{'-':>9}"
        term, size = r.memory.binding()
        note = "chosen" if r is lay.chosen else \
            (f"does not fit: binding term {term} {size / GB:.1f} GB/rank" if r.problem else "")
        lines.append(f"{r.ep:>4} {r.cluster.expert_dp:>9} {r.placement():<16} "
                     f"{r.memory.total_bytes / GB:>14.1f} {step}  {note}")
    lines.append(f"why: {lay.reason()}")
    return "\n".join(lines)


def _degrees(rs: tuple[int, ...]) -> str:
    return str(rs[0]) if len(set(rs)) == 1 else ",".join(map(str, rs))


def _table(rows: list[PolicyRow], step_us: float, executed_us: float, host: bool) -> str:
    """One row per schedule, moesched first. ``step_ms (host model)``: the step as the
    executor runs it (:func:`moesched.schedules.base.executed_timeline`); with host costs a
    ``GPU-only step_ms`` column gives the list-scheduled step on GPU costs alone.
    ``speedup_vs_vanilla`` = vanilla's step / the row's step (> 1 is faster), host model."""
    step_h = "step_ms (host model)" if host else "step_ms (GPU costs)"
    base = next((r.executed_us for r in rows if r.policy == "vanilla" and r.executed_us), None)
    headers = ["schedule", step_h] + (["GPU-only step_ms"] if host else []) + ["speedup_vs_vanilla"]
    out = [[f"{'moesched':10s}", executed_us, step_us, base / executed_us if base else None]]
    out += [[f"{r.policy:10s}", r.executed_us, r.step_us, r.speedup_vs_vanilla] for r in rows]
    widths = [10, len(step_h)] + ([len("GPU-only step_ms")] if host else []) + [len("speedup_vs_vanilla")]
    lines = [" ".join(h.ljust(w) if j == 0 else h.rjust(w) for j, (h, w) in enumerate(zip(headers, widths)))]
    for name, x, gpu, sp in out:
        if x is None:
            cells = [name, "-"] + (["-"] if host else []) + ["(cannot run)"]
        else:
            cells = [name, f"{x / 1e3:.3f}"] + ([f"{gpu / 1e3:.3f}"] if host else []) + \
                [f"{sp:.2f}x" if sp is not None else "-"]
        lines.append(" ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(lines)
