"""``moesched profile``: measure a profile under torchrun, or check the fits of one.

A command of the ``moesched`` CLI that the torch side registers (entry-point group
``moesched.commands`` in pyproject.toml; :mod:`moesched.cli`). This module imports no
torch: ``--check`` and ``--refit`` run without it.

Measure (needs torch; every rank runs it)::

    torchrun --nproc_per_node=4 -m moesched profile --out profiles/h200x4-nvlink.json
    torchrun --nproc_per_node=2 -m moesched profile --out profiles/cpu-gloo-2.json --quick
    torchrun --nproc_per_node=1 -m moesched profile --out h200x1-dep.json --models Qwen3-30B-A3B --inference

Check (no torch)::

    moesched profile --check profiles/h200x4-nvlink.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

from moesched.collective_check import check_lines
from moesched.configs import models_from_spec
from moesched.costs.build import refit
from moesched.costs.check import report_lines
from moesched.errors import MoeschedError
from moesched.fileio import check_outputs
from moesched.profile import Profile, resolve_profile_path

HELP = "measure a profile (under torchrun, --out FILE) or check the fits of one (--check FILE)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", metavar="FILE", help="print every fit of a profile (no torch needed)")
    p.add_argument("--tol", type=float, default=0.10,
                   help="with --check: flag points whose fitted value is off by more than this fraction (0.10)")
    p.add_argument("--refit", metavar="FILE", help="rebuild the fits of a measured profile from the raw samples "
                   "it keeps (no torch, no measuring); writes --out, default in place")
    p.add_argument("--out", metavar="FILE", help="where to write the measured profile (atomically, rank 0)")
    p.add_argument("--models", metavar="A,B|FILE.json", help="model presets, or a configs JSON "
                   "(moesched.configs), whose shapes are timed and kept as per-shape curves (default: Mixtral-8x7B,DeepSeek-V2-Lite,GPT2-XL-MoE on GPU, GPT2-Tiny-MoE on CPU); "
                   "with --refit: the models the profile was measured on, to fit its operator corrections again "
                   "(profiles that record them in meta.model_configs need none)")
    p.add_argument("--emulate-nodes", type=int, metavar="K", default=None,
                   help="pose as K nodes (NCCL_HOSTID per node of world/K ranks)")
    p.add_argument("--quick", action="store_true", help="coarser grids (x4 steps)")
    p.add_argument("--comm-passes", type=int, default=3, metavar="N",
                   help="passes over the collective grid, each with its share of the reps; each pass's "
                        "median is kept (meta.comm_pass_us) to show how repeatable a point is (default 3)")
    p.add_argument("--regime", metavar="LABEL", help="hardware.regime label (default from NCCL_* settings)")
    p.add_argument("--name", help="profile name (default: the file name without .json)")
    p.add_argument("--inference", action="store_true",
                   help="also time the forward-only DEP inference tasks of each model (attention, shared "
                        "and expert task of executor.dep; the profile's dep section, moesched.depcurves)")
    p.add_argument("--host-steps", type=int, default=None, metavar="N",
                   help="executor steps per calibration plan that measure the host issue cost of each task "
                        "kind (moesched.host; default 3 on GPUs, 0 = skip, the CPU default)")


def _models_file(args: argparse.Namespace) -> str | None:
    """``--models`` when it names a configs file (an input no output may overwrite)."""
    return args.models if args.models and args.models.endswith(".json") else None


def _offline(args: argparse.Namespace) -> int:
    """``--refit`` and ``--check``: no torch, no measuring."""
    if args.refit:
        if args.check:
            raise MoeschedError("profile: give either --check FILE or --refit FILE, not both")
        src = resolve_profile_path(args.refit)
        if args.out is None and src not in (Path(args.refit), Path(f"{args.refit}.gz")):
            raise MoeschedError(f"profile: --refit {args.refit} names a shipped profile; give --out FILE for the "
                                "refitted copy (or its path, to refit it in place)")
        out = args.out or src  # in place by default
        check_outputs({"--out": out}, {"--models": _models_file(args)})
        models = models_from_spec(args.models) if args.models else None
        prof = refit(Profile.load(src), models)
        prof.save(out)
        rep = prof.meta["replay"]
        print(f"refitted {src} -> {out}: replay error mean {rep['mean_err_pct']} %, "
              f"max {rep['max_err_pct']} % ({rep['worst']})")
        return 0
    if args.out:
        raise MoeschedError("profile: give either --check FILE or --out FILE, not both")
    if not 0 <= args.tol < float("inf"):
        raise MoeschedError(f"profile: --tol must be a fraction >= 0, got {args.tol}")
    prof = Profile.load(args.check)
    print("\n".join(report_lines(prof, args.tol) + check_lines(prof)))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.refit or args.check:
        try:
            return _offline(args)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, ArithmeticError) as e:
            # the free-form meta section (raw samples, replay, overheads) has an unexpected shape
            raise MoeschedError(f"profile {args.refit or args.check}: its meta section is malformed "
                                f"({type(e).__name__}: {e})") from None
    if not args.out:
        raise MoeschedError("profile: give --out FILE to measure (under torchrun) or --check FILE to inspect")
    check_outputs({"--out": args.out}, {"--models": _models_file(args)})  # before minutes of measuring
    if args.host_steps is not None and args.host_steps < 0:
        raise MoeschedError(f"profile: --host-steps must be >= 0, got {args.host_steps}")
    if args.emulate_nodes is not None and args.emulate_nodes < 1:
        raise MoeschedError(f"profile: --emulate-nodes must be >= 1, got {args.emulate_nodes}")
    if not 1 <= args.comm_passes <= 64:
        raise MoeschedError(f"profile: --comm-passes must be 1 to 64, got {args.comm_passes}")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MoeschedError("profile: measuring needs torch: pip install torch "
                            "(--check FILE and --refit FILE work without it)") from None
    from executor.profiling.main import main  # imports torch

    return main(args)
