"""A measured profile from the profiler's raw samples: fits per compute kind, collective,
scope and model shape (:mod:`moesched.costs.fit`), the replay check on held-out points,
per-task overheads, and the in-situ corrections (:mod:`moesched.costs.calibrate`);
:func:`refit` redoes all of it from the samples a profile keeps in its meta.

Raw samples as the profiler gathers them (one row per measured point, µs = median):
compute rows (model, kind, tokens, flops, us, role), comm rows (op, scope, bytes, us, role);
role "fit" (fitted), "tiny" (fitted, and the per-task overhead) or "replay" (held out).
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any, Sequence

from moesched.costs.calibrate import MIN_SHAPES_KEY, PER_DTYPE_KEY, with_host
from moesched.costs.fit import fit, fit_line, rel_err_pct
from moesched.costs.opsfit import fit_corrections, fit_summary
from moesched.depcurves import DepCurves
from moesched.errors import MoeschedError
from moesched.kinds import ALL_COMPUTE_KINDS, COMPUTE_KINDS
from moesched.models import MoEModel
from moesched.profile import Cost, Profile

UNEVEN = "all_to_all_uneven"  # measured and summarised in meta, not a profile collective


def build_profile(name: str, description: str, hardware: dict[str, Any], meta: dict[str, Any],
                  compute: dict[str, list[tuple[float, float]]],
                  comm: dict[str, dict[str, list[tuple[float, float]]]],
                  compute_slowdown: float, comm_slowdown: float,
                  shapes: dict[str, dict[str, list[tuple[float, float]]]] | None = None) -> Profile:
    """Fit raw samples ((x, µs) lists per compute kind and per collective and scope) into a
    measured :class:`Profile`; ``shapes`` (shape key -> kind -> samples) gives per-shape
    compute curves. The fit details go to ``meta["fits"]``."""
    missing = [k for k in COMPUTE_KINDS if not compute.get(k)]
    if missing:
        raise MoeschedError(f"profile: no compute measurements for {missing}")
    fits: dict[str, Any] = {}
    costs: dict[str, Cost] = {}
    for k in [k for k in ALL_COMPUTE_KINDS if compute.get(k)]:
        xs, ts = [x for x, _ in compute[k]], [t for _, t in compute[k]]
        if shapes:
            # Measured shapes use their own curves; the per-kind cost is the fallback for other
            # shapes, and there a table through several shapes' medians zigzags (shapes of
            # equal FLOPs differ several-fold in time), so the fallback is one monotone line.
            line = fit_line(xs, ts)
            costs[k] = Cost(line.alpha_us, line.beta, (), round(line.r2, 6))
            fits[f"compute.{k}"] = {"model": "line (fallback for unmeasured shapes)", "n_samples": len(xs),
                                    "max_rel_err": round(line.max_rel_err, 6)}
        else:
            r = fit(xs, ts)
            costs[k], fits[f"compute.{k}"] = r.cost, r.info
    comm_costs: dict[str, dict[str, Cost]] = {}
    for op, by in comm.items():
        for scope, samples in by.items():
            if not samples:
                continue
            r = fit([x for x, _ in samples], [t for _, t in samples])
            comm_costs.setdefault(op, {})[scope] = r.cost
            fits[f"comm.{op}.{scope}"] = r.info
    shape_costs: dict[str, dict[str, Cost]] = {}
    for key, by in (shapes or {}).items():
        for k, samples in by.items():
            if len(samples) >= 2:
                r = fit([x for x, _ in samples], [t for _, t in samples])
                shape_costs.setdefault(key, {})[k] = r.cost
                fits[f"shapes.{key}.{k}"] = r.info
    meta = dict(meta, fits=fits)
    prof = Profile(name, "measured", description, dict(hardware), meta, costs, comm_costs,
                   max(1.0, float(compute_slowdown)), max(1.0, float(comm_slowdown)), shape_costs)
    return Profile.from_dict(prof.to_dict(), source=f"profile {name}")  # validate


def summarize(compute: list[Sequence[Any]], comm: list[Sequence[Any]], prof: Profile,
              shape_of: dict[str, str] | None = None) -> dict[str, Any]:
    """Replay errors (%) of the fitted ``prof`` on the held-out points, per-task overheads
    (tiny compute tasks, smallest messages), and the uneven all-to-all's time relative to
    the even one."""
    shape_of = shape_of or {}
    errs = [(f"compute.{k}@{n}:{t}", rel_err_pct(prof.compute_us(k, x, shape_of.get(n)), us))
            for n, k, t, x, us, role in compute if role == "replay"]
    errs += [(f"comm.{op}.{s}@{b}", rel_err_pct(prof.comm_us(op, s, b), us))
             for op, s, b, us, role in comm if role == "replay" and op != UNEVEN]
    worst = max(errs, key=lambda e: e[1]) if errs else ("", 0.0)
    replay = {"n": len(errs), "mean_err_pct": round(statistics.fmean(e for _, e in errs), 2) if errs else None,
              "max_err_pct": round(worst[1], 2), "worst": worst[0]}
    for part in ("compute", "comm"):
        mine = [e for k, e in errs if k.startswith(part + ".")]
        replay[f"{part}_mean_err_pct"] = round(statistics.fmean(mine), 2) if mine else None
    replay["points"] = {k: round(e, 2) for k, e in errs}
    spread = prof.meta.get("comm_spread_pct") or {}  # repeatability of each collective's median
    names = {name for name, _ in errs}
    held = [float(v) for k, v in spread.items() if f"comm.{k}" in names]
    if spread:
        replay["comm_spread_mean_pct"] = round(statistics.fmean(float(v) for v in spread.values()), 2)
    if held:
        replay["comm_replay_spread_mean_pct"] = round(statistics.fmean(held), 2)
    overhead = {k: us for _, k, _, _, us, role in compute if role == "tiny"}
    smallest = min((b for _, _, b, _, _ in comm), default=0)
    overhead.update({f"{op}.{s}": us for op, s, b, us, role in comm if role == "fit" and b == smallest})
    even = {(s, b): us for op, s, b, us, _ in comm if op == "all_to_all"}
    ratios: dict[str, list[float]] = {}
    for op, s, b, us, _ in comm:
        if op == UNEVEN and (s, b) in even:
            ratios.setdefault(s, []).append(us / even[(s, b)])
    uneven = {s: {"mean_ratio_to_even": round(statistics.fmean(r), 3), "max_ratio_to_even": round(max(r), 3)}
              for s, r in ratios.items()}
    return {"replay": replay, "overhead_us": overhead, UNEVEN: uneven}


def consensus(curves: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """One curve from several model shapes' (x, µs) curves: at every measured x, the median
    of the curves (each interpolated piecewise linearly) whose x range covers it.

    The profile keys compute costs by FLOPs alone, but shapes differ in efficiency at equal
    FLOPs; pooling their points would make the interpolation zigzag between shapes."""
    interps = [Cost(0.0, 0.0, tuple(c)) if len(c) >= 2 else None for c in curves]
    out = []
    for x in sorted({x for c in curves for x, _ in c}):
        vals = [t for c, f in zip(curves, interps) for cx, t in c if cx == x and f is None]
        vals += [f(x) for f in interps if f is not None and f.points[0][0] <= x <= f.points[-1][0]]
        out.append((x, statistics.median(vals)))
    return out


def profile_from_samples(name: str, description: str, hardware: dict[str, Any], meta: dict[str, Any],
                         compute: list[Sequence[Any]], comm: list[Sequence[Any]], compute_slowdown: float,
                         comm_slowdown: float, duration_s: float | None = None,
                         shape_of: dict[str, str] | None = None) -> Profile:
    """Fit the profiler's raw rows (see the module docstring) into a profile whose meta also holds the raw
    samples, the replay check and the overheads (:func:`summarize`); compute curves of
    several model shapes are combined by :func:`consensus` into the per-kind costs, and,
    when ``shape_of`` maps model names to shape keys, also kept per shape."""
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {k: {} for k in ALL_COMPUTE_KINDS}
    for model, k, _, x, us, role in compute:
        if role != "replay":
            curves[k].setdefault(model, []).append((x, us))
    fit_c = {k: consensus(list(by.values())) for k, by in curves.items() if by}
    fit_m: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for op, s, b, us, role in comm:
        if role != "replay" and op != UNEVEN:
            fit_m.setdefault(op, {}).setdefault(s, []).append((b, us))
    meta = dict(meta, samples={"compute": [list(r) for r in compute], "comm": [list(r) for r in comm]},
                shape_of=dict(shape_of or {}))
    shapes = {shape_of[m]: {k: curves[k][m] for k in ALL_COMPUTE_KINDS if m in curves[k]}
              for m in {m for by in curves.values() for m in by} if shape_of and m in shape_of}
    prof = build_profile(name, description, hardware, meta, fit_c, fit_m, compute_slowdown, comm_slowdown, shapes)
    extra = summarize(compute, comm, prof, shape_of)
    if duration_s is not None:
        extra["duration_s"] = round(duration_s, 1)
    return build_profile(name, description, hardware, dict(meta, **extra), fit_c, fit_m, compute_slowdown,
                         comm_slowdown, shapes)


def refit(prof: Profile, models: Sequence[MoEModel] | None = None) -> Profile:
    """Rebuild a measured profile's fits from the raw samples it keeps in meta (no new
    measurement): for when the fitting code improves. The operator corrections are fitted
    again against the current recipe (:func:`moesched.costs.opsfit.fit_corrections`) where
    the models the profile timed are known: ``models``, else ``meta.model_configs``;
    otherwise they stay as fitted, with the recipe they were fitted against."""
    meta = dict(prof.meta)
    samples = meta.pop("samples", None)
    if not samples or "compute" not in samples or "comm" not in samples:
        raise MoeschedError(f"profile {prof.name} keeps no raw samples to refit")
    for k in ("fits", "replay", "overhead_us", UNEVEN, "insitu_compute", MIN_SHAPES_KEY, PER_DTYPE_KEY):
        meta.pop(k, None)
    shape_of = meta.get("shape_of") or {}
    out = profile_from_samples(prof.name, prof.description, prof.hardware, meta,
                               [tuple(r) for r in samples["compute"]], [tuple(r) for r in samples["comm"]],
                               prof.compute_slowdown, prof.comm_slowdown, meta.get("duration_s"), shape_of)
    # operator tables are kept as measured; their correction without the in-situ factors
    # (undone by the rules prof was calibrated with), which with_host applies again
    from moesched.costs.calibrate import apply_factors
    ops = apply_factors(prof, prof.meta.get("insitu_compute") or {}, undo=True).ops if prof.ops else None
    known = list(models or []) or [MoEModel.from_dict(d) for d in (meta.get("model_configs") or {}).values()]
    if ops is not None and known:
        ops, rows = fit_corrections(ops, {m.name: m for m in known}, samples["compute"], int(meta.get("world_size") or 1))
        out = replace(out, meta=dict(out.meta, ops_fit=fit_summary(ops, rows)))
    out = replace(out, interference_by_op=dict(prof.interference_by_op), ops=ops, dep=prof.dep)  # dep: as measured
    if samples.get("host"):
        out = with_host(out, samples["host"], float(samples.get("host_lag_us", 0.0)), samples.get("a2a"),
                        samples.get("insitu_compute"), samples.get("host_x_unit", "tokens"))
    return out


def dep_curves(rows: Sequence[Sequence[Any]]) -> tuple[DepCurves, dict[str, Any]]:
    """The profile's ``dep`` section from the profiler's DEP rows (shape key, curve key
    (:func:`moesched.depcurves.dep_key`), x = tokens or copies, µs): one :func:`fit` per
    (shape, curve) of at least two points, and its fit details keyed ``dep.SHAPE.CURVE``."""
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for shape, key, x, us in rows:
        samples.setdefault((str(shape), str(key)), []).append((float(x), float(us)))
    shapes: dict[str, dict[str, Cost]] = {}
    fits: dict[str, Any] = {}
    for (shape, key), pts in sorted(samples.items()):
        if len({x for x, _ in pts}) >= 2:
            r = fit([x for x, _ in pts], [t for _, t in pts])
            shapes.setdefault(shape, {})[key] = r.cost
            fits[f"dep.{shape}.{key}"] = r.info
    return DepCurves(shapes), fits
