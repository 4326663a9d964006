"""``moesched validate``: predicted against measured on real GPUs (runs under torchrun).

A command of the ``moesched`` CLI that the torch side registers (entry-point group
``moesched.commands`` in pyproject.toml; :mod:`moesched.cli`). This module imports no torch,
so ``moesched validate --help`` works without it.
"""
from __future__ import annotations

import argparse
import math
import os

from moesched.configs import load_configs
from moesched.errors import MoeschedError
from moesched.fileio import check_outputs
from moesched.models import MoEModel
from moesched.schedules import POLICIES
from moesched.validation_csv import check_csv

HELP = "execute every schedule on real GPUs (under torchrun) and compare measured with predicted step times"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, help="measured profile of this cluster and network regime")
    p.add_argument("--configs", required=True, help="configuration set (JSON, see moesched.configs)")
    p.add_argument("--schedules", default=",".join(POLICIES) + ",moesched", help="comma list (default: all + moesched)")
    p.add_argument("--out", required=True, help="CSV to add rows to (its rows are kept; rewritten atomically as each plan is measured)")
    p.add_argument("--traces", default=None, help="folder for predicted and measured Chrome traces")
    p.add_argument("--regime", default=None, help="label (default: the profile's hardware.regime)")
    p.add_argument("--emulate-nodes", type=int, default=None, metavar="K", help="pose as K nodes (NCCL_HOSTID)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1,
                   help="measure every plan this many times, interleaved across plans (median over all; the "
                        "spread of the repeats' medians goes to the CSV)")
    p.add_argument("--issue", default="single",
                   help="executor issue modes to run each plan in, comma list of single, threads (default single)")
    p.add_argument("--skew", type=float, default=0.0, metavar="X",
                   help="deepseek_v3 configurations only: selection bias -X ln(1+e) on expert e, an imbalanced "
                        "step (default 0: no bias)")
    p.add_argument("--workers", type=int, default=16, help="processes that solve the plans")
    p.add_argument("--heartbeat-timeout", type=float, default=30.0, metavar="S",
                   help="a rank silent this long stops every rank with one line (default 30)")


def check_skew(skew: float, models: list[MoEModel]) -> None:
    """Raise MoeschedError unless ``skew`` is finite and >= 0, and every model routes by
    ``deepseek_v3`` (whose selection bias it sets, :mod:`executor.skewed`) when positive."""
    if not (math.isfinite(skew) and skew >= 0):
        raise MoeschedError(f"--skew must be a finite number >= 0, got {skew:g}")
    other = [m.name for m in models if m.router != "deepseek_v3"]
    if skew > 0 and other:
        raise MoeschedError(f"--skew sets deepseek_v3's selection bias; configuration(s) {', '.join(other)} "
                            f"route otherwise")


def check_lists(args: argparse.Namespace) -> None:
    """Refuse an unknown or empty ``--schedules``, a bad ``--issue`` and a ``--traces`` that is
    a file, before the process group starts (one line, on every rank)."""
    names = [s.strip() for s in args.schedules.split(",") if s.strip()]
    bad = [s for s in names if s not in POLICIES and s != "moesched"]
    if bad or not names:
        raise MoeschedError(f"--schedules: unknown or none {bad or args.schedules!r}; known: "
                            f"{', '.join(POLICIES)}, moesched")
    issues = [s for s in args.issue.split(",") if s]
    if not issues or any(s not in ("threads", "single") for s in issues):
        raise MoeschedError(f"--issue takes threads and/or single, got {args.issue!r}")
    if args.traces is not None and (not args.traces.strip() or os.path.lexists(args.traces)
                                    and not os.path.isdir(args.traces)):
        raise MoeschedError(f"--traces {args.traces!r} must be a folder (it is created if missing)")


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        raise MoeschedError(f"--repeats and --steps must be at least 1 and --warmup at least 0 "
                            f"(got {args.repeats}, {args.steps}, {args.warmup})")
    if not 0 < args.heartbeat_timeout < math.inf or args.workers < 1:
        raise MoeschedError(f"--heartbeat-timeout must be positive and finite and --workers at least 1 "
                            f"(got {args.heartbeat_timeout:g}, {args.workers})")
    check_outputs({"--out": args.out}, {"--profile": args.profile, "--configs": args.configs})
    check_csv(args.out)
    check_lists(args)
    check_skew(args.skew, [c.model for c in load_configs(args.configs)])
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MoeschedError("the validate command needs torch: pip install torch") from None
    if "RANK" not in os.environ:
        raise MoeschedError("moesched validate runs under torchrun: torchrun --nproc_per_node=N -m moesched validate ...")
    from executor.validate import main  # imports torch

    return main(args)
