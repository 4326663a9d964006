"""``moesched routing``: synthetic routing traces and the skew of a trace.

* ``moesched routing gen SPEC --model NAME --ep S --steps N --out FILE``: a trace of the
  generator SPEC (``zipf:1.2[,drift=0.1][,seed=0]``, ``dirichlet:0.5``, ``even``;
  :mod:`moesched.routing_gen`) for the model's layers, experts, tokens per rank and top-k.
* ``moesched routing show TRACE [--png FILE]``: per layer, the max/mean expert load (mean,
  p90, worst over steps, first and last tenth of the steps) and how often the most loaded
  expert changes; ``--png`` draws max/mean load over steps.
"""
from __future__ import annotations

import argparse

from moesched.commands.models import format_table
from moesched.errors import MoeschedError
from moesched.fileio import check_input, check_outputs
from moesched.models import MoEModel
from moesched.routing_gen import generate, parse_spec
from moesched.routing_stats import layer_skew, save_skew_png
from moesched.routing_trace import load

HELP = "make synthetic routing traces (gen) and report a trace's load skew (show)"
MAX_STEPS = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    sub.required = True
    g = sub.add_parser("gen", help="write a synthetic routing trace", description="write a synthetic routing trace")
    g.add_argument("spec", help="zipf:S[,drift=D][,seed=N] | dirichlet:A[,seed=N] | even")
    g.add_argument("--model", required=True, help="model preset (see `moesched models`)")
    g.add_argument("--ep", type=int, required=True, help="EP group size S (divides the experts)")
    g.add_argument("--steps", type=int, default=100, help="steps (default 100)")
    g.add_argument("--out", required=True, help="trace file to write (JSON lines)")
    s = sub.add_parser("show", help="load skew of a routing trace", description="load skew of a routing trace")
    s.add_argument("trace", help="routing trace file (docs/formats.md)")
    s.add_argument("--png", default=None, help="also draw max/mean expert load over steps here")


def run(args: argparse.Namespace) -> int:
    return _gen(args) if args.action == "gen" else _show(args)


def _gen(args: argparse.Namespace) -> int:
    check_outputs({"--out": args.out})
    if not 1 <= args.steps <= MAX_STEPS:
        raise MoeschedError(f"--steps must be between 1 and {MAX_STEPS}, got {args.steps}")
    spec = parse_spec(args.spec)
    m = MoEModel.from_name(args.model)
    if args.ep < 1 or m.experts % args.ep:
        raise MoeschedError(f"--ep {args.ep} must divide the model's {m.experts} experts")
    trace = generate(spec, m.layers, m.experts, args.ep, m.tokens, m.top_k, args.steps)
    trace.save(args.out)
    worst = max(s.worst for s in layer_skew(trace))
    print(f"{spec} for {m.name} (EP {args.ep}): {args.steps} steps x {m.layers} layers written to {args.out}; "
          f"worst max/mean expert load {worst:.2f}")
    return 0


def _show(args: argparse.Namespace) -> int:
    check_input(args.trace, "routing trace")
    check_outputs({"--png": args.png}, {"trace": args.trace})
    trace = load(args.trace)
    h = trace.header
    print(f"{args.trace}: {len(trace.steps)} steps, {h.layers} layers, {h.experts} experts over EP {h.ep}, "
          f"{h.tokens_per_rank} tokens x top-{h.top_k} per rank, router {h.router}")
    print(f"source: {h.source or '-'}")
    rows = [[s.layer, f"{s.mean:.3f}", f"{s.p90:.3f}", f"{s.worst:.3f}", f"{s.first:.3f}", f"{s.last:.3f}",
             f"{100 * s.top_changes:.0f}%"] for s in layer_skew(trace)]
    print(format_table(["layer", "mean", "p90", "worst", "first 10%", "last 10%", "top expert changes"], rows,
                       [True] * 7))
    print("max/mean expert load per step (1.0 = even); top expert changes: share of steps whose most loaded "
          "expert differs from the step before")
    if args.png:
        save_skew_png(trace, args.png, f"{args.trace}: max/mean expert load")
        print(f"figure written to {args.png}")
    return 0
