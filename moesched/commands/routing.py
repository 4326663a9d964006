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
from moesched.cluster import Cluster
from moesched.models import MoEModel
from moesched.plan import Plan
from moesched.profile import Profile
from moesched.routing_gen import generate, parse_spec
from moesched.routing_stats import layer_skew, save_skew_png
from moesched.routing_trace import is_trace_path, load

HELP = "make synthetic routing traces (gen) and report a trace's load skew (show)"
MAX_STEPS = 100_000
#: Most routing counts (steps x layers x EP x experts) a generated trace holds: 10^8 counts
#: are about 350 MB of JSON lines and half a minute to write.
MAX_COUNTS = 10**8


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


def add_routing_arguments(parser: argparse.ArgumentParser) -> None:
    """``--routing`` and ``--routing-samples`` of simulate and solve."""
    parser.add_argument("--routing", default=None, metavar="TRACE|SPEC",
                        help="price plans under uneven routing: a routing trace file, or zipf:S[,drift=D], "
                             "dirichlet:A, even (docs/routing.md)")
    parser.add_argument("--routing-samples", type=int, default=8, metavar="N",
                        help="steps of the distribution each plan is replayed under (default 8)")
    parser.add_argument("--routing-chunks", action="store_true",
                        help="price each chunk of a chunked layer from its own share of the load "
                             "(a hypergeometric split of the step's copies; docs/routing.md)")


def check_routing(args: argparse.Namespace, model: MoEModel) -> None:
    """Refuse a bad ``--routing`` or ``--routing-samples`` before any work (one line)."""
    if args.routing is None:
        return
    from moesched.imbalance import check_trace_fits
    from moesched.routing_gen import parse_spec
    if not 1 <= args.routing_samples <= 1000:
        raise MoeschedError(f"--routing-samples must be between 1 and 1000, got {args.routing_samples}")
    if is_trace_path(args.routing):
        check_trace_fits(load(args.routing), model)
        return
    try:
        parse_spec(args.routing)
    except MoeschedError as e:
        raise MoeschedError(f"--routing {args.routing!r}: not a trace file, and {e}") from None


def print_routing_table(args: argparse.Namespace, model: MoEModel, cluster: Cluster, profile: Profile,
                        names: list[str]) -> None:
    """simulate --routing: every policy under the same sampled steps."""
    from moesched import imbalance_plans as ip
    loads = ip.sampled_loads(args.routing, model, cluster, args.routing_samples)
    cands = ip.rank_plans(model, cluster, profile, ip.policy_plans(model, cluster, profile, names), loads,
                          args.routing_chunks)
    print(f"\nunder routing {args.routing} ({len(loads)} sampled steps; each plan replayed in its issue order):")
    print(routing_table(cands))


def choose_under_routing(args: argparse.Namespace, model: MoEModel, cluster: Cluster, profile: Profile,
                         plan: Plan) -> Plan:
    """solve --routing: the plan with the lowest mean step under the same sampled steps of
    the distribution, the solver's even-routing plan among the candidates
    (:func:`moesched.imbalance_solve.choose`); prints the comparison and returns the plan
    to write."""
    from moesched import imbalance_plans as ip
    from moesched.imbalance_solve import choose, chosen_plan
    loads = ip.sampled_loads(args.routing, model, cluster, args.routing_samples)
    ch = choose(model, cluster, profile, plan.knobs, list(plan.order), loads, args.time_limit, args.zero,
                chunk_loads=args.routing_chunks)
    print(f"under routing {args.routing} ({len(loads)} sampled steps; each plan replayed in its issue order; "
          f"{len(ch.candidates)} plans compared, per-layer trials not counted):")
    print(routing_table(ch.shown(), ch.best.name))
    r, e = ch.best.result, ch.even.result
    print(f"chosen for the distribution: {ch.best.name}, mean {r.mean_us / 1e3:.3f} ms, p90 {r.p90_us / 1e3:.3f} ms "
          f"({100 * (r.mean_us / e.mean_us - 1):+.1f}% vs the even plan under the same steps)")
    return chosen_plan(ch, model, cluster, profile, plan, args.routing)


def routing_table(cands: list, chosen: str | None = None) -> str:
    """One row per plan (:class:`moesched.imbalance_plans.Candidate`): even, mean and p90
    step (ms), slowdown, dropped copies per step."""
    rows = []
    for c in cands:
        r = c.result
        label = c.name + (" (chosen)" if c.name == chosen else "")
        rows.append([label, f"{r.even_us / 1e3:.3f}", f"{r.mean_us / 1e3:.3f}", f"{r.p90_us / 1e3:.3f}",
                     f"{100 * (r.slowdown - 1):+.1f}%", f"{r.dropped:.0f}"])
    return format_table(["plan", "even step_ms", "mean step_ms", "p90 step_ms", "vs even", "dropped/step"], rows,
                        [False] + [True] * 5)


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
    per_step = m.layers * args.ep * m.experts
    if args.steps * per_step > MAX_COUNTS:
        raise MoeschedError(f"--steps {args.steps}: a trace of {args.steps} steps x {m.layers} layers x EP {args.ep} x "
                            f"{m.experts} experts holds more than {MAX_COUNTS:.0e} counts; "
                            + (f"at most {MAX_COUNTS // per_step} steps here" if per_step <= MAX_COUNTS
                               else "too many even for one step"))
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
             f"{100 * s.top_changes:.0f}%", f"{s.rank_mean:.3f}"] for s in layer_skew(trace)]
    print(format_table(["layer", "mean", "p90", "worst", "first 10%", "last 10%", "top expert changes",
                        f"rank mean (EP {h.ep})"], rows, [True] * 8))
    print("max/mean expert load per step (1.0 = even); top expert changes: share of steps whose most loaded "
          f"expert differs from the step before; rank: max/mean copies received per EP rank, experts e on "
          f"rank e // {h.experts // h.ep}")
    if args.png:
        save_skew_png(trace, args.png, f"{args.trace}: max/mean expert load")
        print(f"figure written to {args.png}")
    return 0
