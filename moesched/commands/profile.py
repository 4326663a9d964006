"""``moesched profile``: measure a profile under torchrun, or check the fits of one.

Measure (needs torch; every rank runs it)::

    torchrun --nproc_per_node=4 -m moesched profile --out profiles/h200x4-nvlink.json
    torchrun --nproc_per_node=2 -m moesched profile --out profiles/cpu-gloo-2.json --quick

Check (no torch)::

    moesched profile --check profiles/h200x4-nvlink.json
"""
from __future__ import annotations

import argparse
from typing import Any

from moesched.errors import MoeschedError

HELP = "measure a profile (under torchrun, --out FILE) or check the fits of one (--check FILE)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", metavar="FILE", help="print every fit of a profile (no torch needed)")
    p.add_argument("--tol", type=float, default=0.10,
                   help="with --check: flag points whose fitted value is off by more than this fraction (0.10)")
    p.add_argument("--refit", metavar="FILE", help="rebuild the fits of a measured profile from the raw samples "
                   "it keeps (no torch, no measuring); writes --out, default in place")
    p.add_argument("--out", metavar="FILE", help="where to write the measured profile (atomically, rank 0)")
    p.add_argument("--models", metavar="A,B|FILE.json", help="model presets, or a configs JSON "
                   "(moesched.configs), whose shapes are timed and kept as per-shape curves (default: Mixtral-8x7B,DeepSeek-V2-Lite,GPT2-XL-MoE on GPU, GPT2-Tiny-MoE on CPU)")
    p.add_argument("--emulate-nodes", type=int, metavar="K", default=None,
                   help="pose as K nodes (NCCL_HOSTID per node of world/K ranks)")
    p.add_argument("--quick", action="store_true", help="coarser grids (x4 steps)")
    p.add_argument("--regime", metavar="LABEL", help="hardware.regime label (default from NCCL_* settings)")
    p.add_argument("--name", help="profile name (default: the file name without .json)")
    p.add_argument("--host-steps", type=int, default=None, metavar="N",
                   help="executor steps per calibration plan that measure the host issue cost of each task "
                        "kind (moesched.host; default 3 on GPUs, 0 = skip, the CPU default)")


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def check_lines(path: str, tol: float) -> list[str]:
    """The report of ``--check`` as lines."""
    from moesched.fit import check
    from moesched.profile import Profile

    prof = Profile.load(path)
    rows = check(prof, tol)
    lines = [f"profile {prof.name} ({prof.kind}): {prof.description}",
             f"hardware: {prof.hardware}",
             f"interference: compute_slowdown {_fmt(prof.compute_slowdown)}, comm_slowdown {_fmt(prof.comm_slowdown)}"
             + "".join(f"; {op}: compute_slowdown {_fmt(c)}, comm_slowdown {_fmt(m)}"
                       for op, (c, m) in sorted(prof.interference_by_op.items())),
             f"{'fit':34} {'model':9} {'alpha_us':>10} {'beta_us/unit':>12} {'R^2':>8} {'pts':>4} {'max_err%':>8}"]
    for r in rows:
        r2 = "-" if r.r2 is None else f"{r.r2:.5f}"
        lines.append(f"{r.key:34} {r.model:9} {_fmt(r.alpha_us):>10} {_fmt(r.beta_us_per_unit):>12} {r2:>8} "
                     f"{r.n_points:>4} {r.max_err_pct:>8.2f}")
        for x, t, y, e in r.flagged:
            lines.append(f"    off by {e:.1f} %: x={_fmt(x)} measured {_fmt(t)} us, fitted {_fmt(y)} us"
                         f" (the profile interpolates the measured point)")
    flagged = sum(len(r.flagged) for r in rows)
    lines.append(f"{len(rows)} fits, {flagged} point(s) more than {100 * tol:g} % off their line")
    meta: dict[str, Any] = prof.meta
    rep = meta.get("replay")
    if isinstance(rep, dict):
        lines.append(f"replay on {rep.get('n')} held-out points: mean error {rep.get('mean_err_pct')} %, "
                     f"max {rep.get('max_err_pct')} % ({rep.get('worst')}); compute mean "
                     f"{rep.get('compute_mean_err_pct')} %, comm mean {rep.get('comm_mean_err_pct')} %")
        if rep.get("comm_spread_mean_pct") is not None:
            lines.append(f"repeatability of the collectives (range of the passes' medians / median): mean "
                         f"{rep.get('comm_spread_mean_pct')} % over all points, "
                         f"{rep.get('comm_replay_spread_mean_pct')} % over the held-out ones")
    else:
        lines.append("replay: none recorded")
    if isinstance(meta.get("overhead_us"), dict):
        lines.append("per-task overhead (us): " + ", ".join(f"{k} {_fmt(v)}" for k, v in meta["overhead_us"].items()))
    if isinstance(meta.get("all_to_all_uneven"), dict):
        lines.append("uneven all-to-all / even: " + ", ".join(
            f"{s} mean {v.get('mean_ratio_to_even')} max {v.get('max_ratio_to_even')}"
            for s, v in meta["all_to_all_uneven"].items()))
    if prof.host is not None:
        h = prof.host
        lines.append(f"host issue costs (moesched.host): lag {_fmt(h.lag_us)} us; per kind, pooled over shapes:")
        for k, c in h.kinds.items():
            lines.append(f"    {k:14} alpha {_fmt(c.alpha_us):>8} us  + {_fmt(c.per_unit_us):>10} us/unit"
                         f"  + {_fmt(c.per_chunk_us):>8} us/degree  R^2 {'-' if c.r2 is None else f'{c.r2:.3f}'}")
    insitu = [(sh, k, c) for sh, by in sorted(prof.shapes.items()) for k, c in by.items() if k.startswith("all_to_all@")]
    if insitu:
        lines.append("all-to-alls timed in executor steps (used for their shape) vs the micro-benchmark:")
        for sh, k, c in insitu:
            scope = k.split("@", 1)[1]
            pts = "  ".join(f"{x / 2**20:.2f} MB {_fmt(t)} us ({t / prof.comm_us('all_to_all', scope, x):.2f}x)"
                            for x, t in c.points) if scope in prof.comm["all_to_all"] else "-"
            lines.append(f"    {sh} {scope}: {pts}")
    factors = meta.get("insitu_compute")
    if isinstance(factors, dict) and factors:
        lines.append("compute in executor steps / micro-benchmark (applied to the costs, moesched.calibrate):")
        for sh, by in sorted(factors.items()):
            lines.append(f"    {sh}: " + "  ".join(f"{k} {f['factor']:.3f} (n={f['n']})" for k, f in by.items()))
    for k in ("command", "date", "duration_s"):
        if k in meta:
            lines.append(f"{k}: {meta[k]}")
    return lines


def _offline(args: argparse.Namespace) -> int:
    """``--refit`` and ``--check``: no torch, no measuring."""
    from moesched.fileio import check_outputs
    if args.refit:
        from moesched.fit import refit
        from moesched.profile import Profile
        check_outputs({"--out": args.out or args.refit})  # in place by default
        prof = refit(Profile.load(args.refit))
        prof.save(args.out or args.refit)
        rep = prof.meta["replay"]
        print(f"refitted {args.refit} -> {args.out or args.refit}: replay error mean {rep['mean_err_pct']} %, "
              f"max {rep['max_err_pct']} % ({rep['worst']})")
        return 0
    if args.out:
        raise MoeschedError("profile: give either --check FILE or --out FILE, not both")
    if not 0 <= args.tol < float("inf"):
        raise MoeschedError(f"profile: --tol must be a fraction >= 0, got {args.tol}")
    print("\n".join(check_lines(args.check, args.tol)))
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
    if args.host_steps is not None and args.host_steps < 0:
        raise MoeschedError(f"profile: --host-steps must be >= 0, got {args.host_steps}")
    if args.emulate_nodes is not None and args.emulate_nodes < 1:
        raise MoeschedError(f"profile: --emulate-nodes must be >= 1, got {args.emulate_nodes}")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MoeschedError("profile: measuring needs torch (pip install 'moesched[torch]'); "
                            "--check FILE works without it") from None
    from executor import profiler

    return profiler.main(args)
