"""``moesched plot``: PNG figures from traces, from a solve, and from a sweep CSV.

* ``moesched plot timeline --trace A.json [--trace B.json] --out X.png``: Gantt charts of
  rank 0 (``--rank``), one panel per timeline in the files (e.g. predicted and measured),
  exposed communication in red;
* ``moesched plot compare --model NAME [--profile FILE] --out X.png``: predicted step time
  of every published policy and of moesched's solution;
* ``moesched plot sweep --csv results.csv --out X.png``: distribution of moesched's speedup
  over vanilla and over the best published policy.

Figures come from :mod:`moesched.figures`; PNGs are written atomically.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from moesched.errors import MoeschedError
from moesched.commands.setup import add_cluster_arguments, check_command_outputs
from moesched.fileio import check_input, check_outputs, read_json

HELP = "draw PNG figures: timelines from traces, a policy comparison, a sweep's speedups"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="figure", metavar="FIGURE", parser_class=type(parser))
    sub.required = True
    t = sub.add_parser("timeline", help="Gantt charts of one or more Chrome traces",
                       description="Gantt charts of one or more Chrome traces (moesched or executor)")
    t.add_argument("--trace", action="append", required=True, metavar="FILE",
                   help="Chrome trace JSON (repeat to compare; every timeline in a file is drawn)")
    t.add_argument("--rank", type=int, default=0, help="rank to draw (default 0)")
    t.add_argument("--title", default=None, help="figure title")
    t.add_argument("--out", required=True, help="PNG to write")
    c = sub.add_parser("compare", help="bar chart of the step time of every policy and moesched",
                       description="solve a preset and draw every published policy's predicted step beside it")
    c.add_argument("--model", required=True, help="model preset (see `moesched models`)")
    c.add_argument("--layers", type=int, default=None, help="override the preset's number of layers")
    c.add_argument("--profile", default=None, help="profile JSON file or shipped profile name")
    add_cluster_arguments(c)
    c.add_argument("--time-limit", type=float, default=None, metavar="S", help="solver time limit in seconds")
    c.add_argument("--out", required=True, help="PNG to write")
    s = sub.add_parser("sweep", help="speedup distribution of a sweep CSV",
                       description="histogram and CDF of moesched's speedup in a `moesched sweep` CSV")
    s.add_argument("--csv", required=True, help="CSV written by `moesched sweep --out`")
    s.add_argument("--title", default=None, help="figure title")
    s.add_argument("--out", required=True, help="PNG to write")


def _check_out(args: argparse.Namespace) -> None:
    """``--out`` names a writable .png that is none of the inputs, and the inputs are
    regular files (before any work)."""
    if Path(args.out).suffix.lower() != ".png":
        raise MoeschedError(f"--out must name a .png file, got {args.out!r}")
    inputs = {f"--trace #{i + 1}": t for i, t in enumerate(getattr(args, "trace", None) or [])}
    inputs["--csv"] = getattr(args, "csv", None)
    for flag, path in inputs.items():
        if path is not None:
            check_input(path, "sweep CSV" if flag == "--csv" else "trace")
    if getattr(args, "figure", None) == "compare":
        check_command_outputs(args, {"--out": args.out}, inputs)
    else:
        check_outputs({"--out": args.out}, inputs)


def load_timelines(paths: list[str]) -> dict[str, object]:
    """Every timeline of every trace file, labelled ``stem`` (or ``stem/label`` when a file
    holds several). Raises MoeschedError for missing, malformed or empty traces."""
    from moesched.trace import read_chrome_trace

    out: dict[str, object] = {}
    for path in paths:
        d = read_json(path, "trace")
        if not isinstance(d, dict) or not isinstance(d.get("traceEvents"), list):
            raise MoeschedError(f"trace {path}: expected a Chrome trace object with a traceEvents list")
        other = d.get("otherData") if isinstance(d.get("otherData"), dict) else {}
        named = other.get("timelines")
        labels = list(named) if isinstance(named, dict) and named else [None]
        for lab in labels:
            tl = read_chrome_trace(path, lab)  # a malformed file is one MoeschedError
            if tl.df.empty:
                raise MoeschedError(f"trace {path} has no complete ('X') events" +
                                    (f" for timeline {lab!r}" if lab else ""))
            name = Path(path).stem if len(labels) == 1 else f"{Path(path).stem}/{lab}"
            base, k = name, 2
            while name in out:
                name, k = f"{base} ({k})", k + 1
            out[name] = tl
    return out


def _timeline(args: argparse.Namespace) -> int:
    from moesched.figures import save_png, timeline_figure

    tls = load_timelines(args.trace)
    title = args.title or " vs ".join(tls)
    save_png(timeline_figure(tls, title, rank=args.rank), args.out)
    print(f"timeline of {', '.join(tls)} written to {args.out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from moesched.commands.setup import check_time_limit, resolve
    from moesched.figures import policy_bar_figure, save_png
    from moesched.solve.api import solve

    check_time_limit(args.time_limit)
    model, profile, cluster = resolve(args)
    res = solve(model, cluster, profile, args.time_limit)
    steps = {r.policy: r.executed_us for r in res.table}  # host model (the tables' step time)
    steps["moesched"] = res.executed_us
    kind = "analytic profile" if profile.kind == "analytic" else "measured profile"
    how = ", host model" if profile.host is not None else ""
    title = f"{model.name} on {cluster.label()}: predicted step time ({profile.name}, {kind}{how})"
    save_png(policy_bar_figure(steps, title), args.out)
    print(f"moesched {res.executed_us / 1e3:.3f} ms; comparison written to {args.out}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from moesched.figures import save_png, speedup_figure, sweep_frame

    df = sweep_frame(args.csv)
    title = args.title or f"moesched speedup, {Path(args.csv).stem}"
    save_png(speedup_figure(df, title), args.out)
    print(f"median speedup_vs_vanilla of moesched {df['speedup_vanilla'].median():.3f}x, vs best published "
          f"{df['speedup_best'].median():.3f}x; written to {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    _check_out(args)
    return {"timeline": _timeline, "compare": _compare, "sweep": _sweep}[args.figure](args)
