"""``moesched layouts``: compare the EP layout (all-to-alls; the solver's EP size and
schedule) with Pipeline MoE's EP inside tensor parallelism for every TP size of the node,
under the memory model, and explain the choice (:mod:`moesched.layoutchoice`). ``--out``
writes the chosen layout's plan (graph + order; a PPMoE plan carries its ``layout``)."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from moesched.cluster import comm_model
from moesched.commands.models import format_table
from moesched.commands.setup import add_cluster_arguments, check_command_outputs, check_time_limit, \
    load_profile, network_note, resolve_cluster
from moesched.layoutchoice import LayoutOption, compare_layouts, reason
from moesched.memory import GB, ZERO_STAGES
from moesched.models import MoEModel
from moesched.pipelinechoice import print_pipelines
from moesched.pipelineplan import add_pipeline_arguments, pipeline_args_checked

HELP = "compare EP (all-to-all) with PPMoE (EP inside TP) layouts under the memory model; explain the choice"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model preset (see `moesched models`) or HF config")
    parser.add_argument("--profile", default=None, help="profile JSON file or shipped profile name")
    add_cluster_arguments(parser, example="32x8 or 32x8/ep16")
    parser.add_argument("--zero", type=int, default=0, choices=ZERO_STAGES, help="ZeRO stage of the memory model")
    parser.add_argument("--time-limit", type=float, default=10.0, metavar="S",
                        help="seconds for the EP layout's schedule search (default 10)")
    parser.add_argument("--out", default=None, metavar="PLAN",
                        help="write the chosen layout's plan JSON (for `torchrun -m executor.run --plan`)")
    add_pipeline_arguments(parser)


def _row(o: LayoutOption, chosen: LayoutOption) -> list[str]:
    b = o.busy_us
    ms = (lambda us: f"{us / 1e3:.2f}")  # noqa: E731
    cells = [o.label(), str(o.layout.tp), str(o.ep) if o.ep else "-",
             f"{o.memory.total_bytes / GB:.1f}" if o.memory else "-"]
    if o.step_us is None:
        return cells + ["-", "-", "-", "-", (o.problem or "")[:110]]
    return cells + [ms(o.step_us), ms(b.get("a2a", 0.0)), ms(b.get("tp", 0.0)), ms(b.get("grad", 0.0)),
                    "chosen" if o is chosen else ""]


def run(args: argparse.Namespace) -> int:
    check_command_outputs(args, {"--out": args.out})
    check_time_limit(args.time_limit)
    if args.model.endswith(".json") or Path(args.model).is_dir():
        model = MoEModel.from_hf_config(args.model)
    else:
        model = MoEModel.from_name(args.model)
    pipeline_args_checked(args, model)
    profile = load_profile(args)
    cluster = resolve_cluster(args, profile)
    comm_model(cluster, profile)  # a cluster other than the profiled layout needs a network
    note = network_note(args, cluster, profile)
    if note:
        print(note)
    opts, chosen = compare_layouts(model, cluster, profile, args.zero, args.time_limit)
    print(f"model: {model.name} ({model.layers} layers), cluster {replace(cluster, ep=None).label()}, "
          f"profile {profile.name}, ZeRO-{args.zero}; same global batch (a TP group of t ranks runs t micro-batches)")
    print(format_table(["layout", "TP", "EP", "memory GB/rank", "step_ms", "a2a_ms", "tp_ms", "grad_ms", "note"],
                       [_row(o, chosen) for o in opts], [False, True, True, True, True, True, True, True, False]))
    print("step_ms: GPU costs, list-scheduled; a2a/tp/grad: rank 0's busy time on each kind of collective")
    print(f"why: {reason(opts, chosen)}")
    print_pipelines(args, model, replace(cluster, ep=opts[0].ep) if opts[0].ep else cluster, profile)
    if args.out:
        assert chosen.plan is not None
        chosen.plan.save(args.out)
        print(f"plan of {chosen.label()} written to {args.out}")
    return 0
