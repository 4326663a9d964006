"""Fitting measured timings to costs: t(x) = alpha_us + beta * x, and checking the fits.

The profiler (``executor/profiler.py``) measures medians (x, µs) per task kind and per
collective; this module turns them into :class:`moesched.profile.Cost` objects and builds
the profile. Pure Python, no numpy needed.

* :func:`fit_line` is weighted least squares on *relative* error (weights 1/t^2): a grid
  spanning three decades of x should be fitted as well at 256 tokens as at 32768. FSMoE
  (arXiv 2501.10714, Eq. 1 and Sec. 4) and FinDEP fit one alpha-beta line per operation by
  least squares and report R^2; :func:`fit_line` reports the ordinary R^2 of its line.
* :func:`fit_piecewise` splits the points at the breakpoint that minimises the residual
  into a small-x regime (latency bound, small GEMMs) and a large-x regime (bandwidth or
  FLOP-rate bound), one line each.
* :func:`fit_cost` keeps the measured points (``Cost`` interpolates between them) and the
  line of the large-x regime, used beyond the last point; :func:`fit_info` says which model
  was chosen and is stored under ``meta.fits`` so that :func:`check` can use it.
* :func:`check` lists every fit of a profile with R^2 and flags points whose fitted
  value is more than ``tol`` (10 %) away from the measured one.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

from moesched.errors import MoeschedError
from moesched.profile import ALL_COMPUTE_KINDS, COLLECTIVES, COMPUTE_KINDS, SHAPE_A2A, Cost, Profile

REL_TOL = 0.10  # a point whose fitted value is more than 10 % off is flagged


@dataclass(frozen=True)
class LineFit:
    """One line t = alpha_us + beta * x fitted to n points."""

    alpha_us: float
    beta: float
    r2: float
    n: int
    max_rel_err: float

    def __call__(self, x: float) -> float:
        return self.alpha_us + self.beta * x


def _r2(ts: Sequence[float], pred: Sequence[float]) -> float:
    """Ordinary coefficient of determination 1 - SS_res / SS_tot (1.0 for constant data
    fitted exactly)."""
    mean = sum(ts) / len(ts)
    ss_tot = sum((t - mean) ** 2 for t in ts)
    ss_res = sum((t - p) ** 2 for t, p in zip(ts, pred))
    if ss_tot <= 0.0:
        return 1.0 if ss_res <= 1e-12 * max(1.0, mean * mean) else 0.0
    return 1.0 - ss_res / ss_tot


def _max_rel(ts: Sequence[float], pred: Sequence[float]) -> float:
    return max((abs(p - t) / t if t > 0 else (0.0 if p == 0 else math.inf)) for t, p in zip(ts, pred))


def fit_line(xs: Sequence[float], ts: Sequence[float], relative: bool = True) -> LineFit:
    """Least-squares line through (x, t) points; weights 1/t^2 when ``relative``.

    Constrained to alpha >= 0 and beta >= 0 (more work never takes less time, the profile
    format forbids a negative beta, and solvers read alpha as a per-task latency): a
    negative slope falls back to the constant alpha = weighted mean, a negative intercept
    to the line through the origin.
    """
    if len(xs) != len(ts) or not xs:
        raise MoeschedError("fit: need the same positive number of x and t values")
    if any(t <= 0 or x < 0 for x, t in zip(xs, ts)) and relative:
        raise MoeschedError("fit: times must be positive and work non-negative")
    ws = [1.0 / (t * t) if relative else 1.0 for t in ts]
    sw = sum(ws)
    mx = sum(w * x for w, x in zip(ws, xs)) / sw
    mt = sum(w * t for w, t in zip(ws, ts)) / sw
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs))
    sxt = sum(w * (x - mx) * (t - mt) for w, x, t in zip(ws, xs, ts))
    beta = sxt / sxx if sxx > 0 else 0.0
    if beta < 0:
        beta = 0.0
    alpha = mt - beta * mx
    if alpha < 0:  # constrained least squares, alpha >= 0 active: t = beta * x
        sxx0 = sum(w * x * x for w, x in zip(ws, xs))
        alpha, beta = 0.0, (sum(w * x * t for w, x, t in zip(ws, xs, ts)) / sxx0 if sxx0 > 0 else 0.0)
    pred = [alpha + beta * x for x in xs]
    return LineFit(alpha, beta, _r2(ts, pred), len(xs), _max_rel(ts, pred))


@dataclass(frozen=True)
class Piecewise:
    """Two lines: ``small`` for x < breakpoint_x, ``large`` for x >= breakpoint_x."""

    breakpoint_x: float
    small: LineFit
    large: LineFit
    r2: float
    max_rel_err: float

    def __call__(self, x: float) -> float:
        return self.small(x) if x < self.breakpoint_x else self.large(x)


def fit_piecewise(xs: Sequence[float], ts: Sequence[float], min_side: int = 2) -> Piecewise:
    """Best split of the points (sorted by x) into two regimes of >= ``min_side`` points
    each, minimising the summed squared relative residual of the two weighted lines."""
    pts = sorted(zip(xs, ts))
    n = len(pts)
    if n < 2 * min_side:
        raise MoeschedError(f"fit: a piecewise fit needs at least {2 * min_side} points, got {n}")
    best: tuple[float, Piecewise] | None = None
    for i in range(min_side, n - min_side + 1):
        lo, hi = pts[:i], pts[i:]
        a = fit_line([p[0] for p in lo], [p[1] for p in lo])
        b = fit_line([p[0] for p in hi], [p[1] for p in hi])
        pred = [a(x) for x, _ in lo] + [b(x) for x, _ in hi]
        ts_sorted = [t for _, t in pts]
        sse = sum(((p - t) / t) ** 2 for p, t in zip(pred, ts_sorted))
        if best is None or sse < best[0]:
            pw = Piecewise(hi[0][0], a, b, _r2(ts_sorted, pred), _max_rel(ts_sorted, pred))
            best = (sse, pw)
    assert best is not None
    return best[1]


def merge_points(xs: Iterable[float], ts: Iterable[float], ratio: float = 1.02) -> list[tuple[float, float]]:
    """Sorted (x, t) points where x values within ``ratio`` of each other are merged into
    one point (median x, median t): repeated measurements, or two model shapes doing the
    same work, become one point of the interpolation table."""
    pts = sorted((float(x), float(t)) for x, t in zip(xs, ts))
    out: list[tuple[float, float]] = []
    group: list[tuple[float, float]] = []
    for p in pts:
        if group and p[0] > group[0][0] * ratio:
            out.append((statistics.median(g[0] for g in group), statistics.median(g[1] for g in group)))
            group = []
        group.append(p)
    if group:
        out.append((statistics.median(g[0] for g in group), statistics.median(g[1] for g in group)))
    return out


@dataclass(frozen=True)
class FitResult:
    """The cost stored in the profile and how it was obtained (for ``meta.fits``)."""

    cost: Cost
    info: dict[str, Any] = field(default_factory=dict)


def _rel_sse(model: Any, xs: Sequence[float], ts: Sequence[float]) -> float:
    return sum(((model(x) - t) / t) ** 2 for x, t in zip(xs, ts))


def fit(xs: Sequence[float], ts: Sequence[float], tol: float = REL_TOL, keep_points: bool = True) -> FitResult:
    """Fit measured (x, µs) samples: one line, or two regimes when one line misses a point
    by more than ``tol``, there are >= 5 distinct points and two lines explain them.

    The returned cost holds the merged measured points (interpolated inside their range),
    the line of the large-x regime (used beyond the range) and R^2
    of the chosen model. ``info`` holds model ("line" or "piecewise"), breakpoint_x and the
    small-regime line, n_samples and max_rel_err.
    """
    pts = merge_points(xs, ts)
    if not pts:
        raise MoeschedError("fit: no measured points")
    if any(t <= 0 for _, t in pts):
        raise MoeschedError("fit: measured times must be positive")
    px, pt = [p[0] for p in pts], [p[1] for p in pts]
    line = fit_line(px, pt)
    info: dict[str, Any] = {"model": "line", "n_samples": len(xs), "n_points": len(pts)}
    alpha, beta, r2, max_rel = line.alpha_us, line.beta, line.r2, line.max_rel_err
    if line.max_rel_err > tol and len(pts) >= 5:
        pw = fit_piecewise(px, pt)
        sse_line, sse_pw = _rel_sse(line, px, pt), _rel_sse(pw, px, pt)
        # Two regimes only when they explain the points: all within tol, or a residual cut
        # tenfold. A lone outlier cuts it less and stays flagged against one line.
        if pw.max_rel_err <= tol or sse_pw < 0.1 * sse_line:
            alpha, beta, r2, max_rel = pw.large.alpha_us, pw.large.beta, pw.r2, pw.max_rel_err
            info.update(model="piecewise", breakpoint_x=pw.breakpoint_x,
                        small_alpha_us=pw.small.alpha_us, small_beta=pw.small.beta)
    info["max_rel_err"] = round(max_rel, 6)
    cost = Cost(alpha, beta, tuple(pts) if keep_points and len(pts) >= 2 else (), round(r2, 6))
    return FitResult(cost, info)


def fit_cost(xs: Sequence[float], ts: Sequence[float], tol: float = REL_TOL) -> Cost:
    """:func:`fit`, returning only the cost (with points and r2)."""
    return fit(xs, ts, tol).cost


def line_value(cost: Cost, info: dict[str, Any] | None, x: float) -> float:
    """The fitted (not interpolated) value at x: the small-regime line below the
    breakpoint of a piecewise fit, else the cost's line."""
    if info and info.get("model") == "piecewise" and x < float(info["breakpoint_x"]):
        return float(info["small_alpha_us"]) + float(info["small_beta"]) * x
    return cost.alpha_us + cost.beta_us_per_unit * x


@dataclass(frozen=True)
class CheckRow:
    """One fit of a profile: key ("compute.expert_fwd" or "comm.all_to_all.intra")."""

    key: str
    alpha_us: float
    beta_us_per_unit: float
    r2: float | None
    n_points: int
    model: str
    flagged: tuple[tuple[float, float, float, float], ...]  # (x, measured_us, fitted_us, err_pct)
    max_err_pct: float

    @property
    def ok(self) -> bool:
        return not self.flagged


def _costs(profile: Profile) -> list[tuple[str, Cost]]:
    out = [(f"compute.{k}", profile.compute[k]) for k in ALL_COMPUTE_KINDS if k in profile.compute]
    for shape, by in sorted(profile.shapes.items()):
        out += [(f"shapes.{shape}.{k}", by[k]) for k in ALL_COMPUTE_KINDS + SHAPE_A2A if k in by]
    for op in COLLECTIVES:
        for scope, cost in sorted(profile.comm.get(op, {}).items()):
            out.append((f"comm.{op}.{scope}", cost))
    return out


def check(profile: Profile, tol: float = REL_TOL) -> list[CheckRow]:
    """Every fit of ``profile``: alpha, beta, R^2, points, and the points whose fitted value
    (the line, or the regime's line of a piecewise fit from ``meta.fits``) is more than
    ``tol`` away from the measured one."""
    fits = profile.meta.get("fits", {}) if isinstance(profile.meta, dict) else {}
    rows = []
    for key, cost in _costs(profile):
        info = fits.get(key) if isinstance(fits, dict) else None
        flagged, worst = [], 0.0
        for x, t in cost.points:
            y = line_value(cost, info, x)
            err = abs(y - t) / t if t > 0 else 0.0
            worst = max(worst, err)
            if err > tol:
                flagged.append((x, t, y, round(100 * err, 2)))
        model = str(info.get("model", "line")) if isinstance(info, dict) else "line"
        rows.append(CheckRow(key, cost.alpha_us, cost.beta_us_per_unit, cost.r2, len(cost.points), model,
                             tuple(flagged), round(100 * worst, 2)))
    return rows


def rel_err_pct(predicted: float, measured: float) -> float:
    """|predicted - measured| / measured in percent."""
    return 100.0 * abs(predicted - measured) / measured if measured > 0 else 0.0


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


# Raw samples as the profiler gathers them (one row per measured point, µs = median):
#   compute rows (model, kind, tokens, flops, us, role), comm rows (op, scope, bytes, us, role);
#   role "fit" (fitted), "tiny" (fitted, and the per-task overhead) or "replay" (held out).
UNEVEN = "all_to_all_uneven"  # measured and summarised in meta, not a profile collective


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
    """Fit the profiler's raw rows (see above) into a profile whose meta also holds the raw
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


def refit(prof: Profile) -> Profile:
    """Rebuild a measured profile's fits from the raw samples it keeps in meta (no new
    measurement): for when the fitting code improves."""
    meta = dict(prof.meta)
    samples = meta.pop("samples", None)
    if not samples or "compute" not in samples or "comm" not in samples:
        raise MoeschedError(f"profile {prof.name} keeps no raw samples to refit")
    for k in ("fits", "replay", "overhead_us", UNEVEN, "insitu_compute"):
        meta.pop(k, None)
    shape_of = meta.get("shape_of") or {}
    out = profile_from_samples(prof.name, prof.description, prof.hardware, meta,
                               [tuple(r) for r in samples["compute"]], [tuple(r) for r in samples["comm"]],
                               prof.compute_slowdown, prof.comm_slowdown, meta.get("duration_s"), shape_of)
    out = replace(out, interference_by_op=dict(prof.interference_by_op))
    if samples.get("host"):
        from moesched.calibrate import with_host
        out = with_host(out, samples["host"], float(samples.get("host_lag_us", 0.0)), samples.get("a2a"),
                        samples.get("insitu_compute"))
    return out
