"""Fitting measured timings to costs: t(x) = alpha_us + beta * x.

The profiler (:mod:`executor.profiling`) measures medians (x, µs) per task kind and per
collective; this module turns them into :class:`moesched.profile.Cost` objects
(:mod:`moesched.costs.build` assembles the profile). Pure Python, no numpy needed.

* :func:`fit_line` is weighted least squares on *relative* error (weights 1/t^2): a grid
  spanning three decades of x should be fitted as well at 256 tokens as at 32768. FSMoE
  (arXiv 2501.10714, Eq. 1 and Sec. 4) and FinDEP fit one alpha-beta line per operation by
  least squares and report R^2; :func:`fit_line` reports the ordinary R^2 of its line.
* :func:`fit_piecewise` splits the points at the breakpoint that minimises the residual
  into a small-x regime (latency bound, small GEMMs) and a large-x regime (bandwidth or
  FLOP-rate bound), one line each.
* :func:`fit_cost` keeps the measured points (``Cost`` interpolates between them) and the
  line of the large-x regime, used beyond the last point; :func:`fit_info` says which model
  was chosen and is stored under ``meta.fits`` so that :func:`moesched.costs.check.check`
  can use it.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from moesched.errors import MoeschedError
from moesched.profile import Cost

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


def r2_score(ts: Sequence[float], pred: Sequence[float]) -> float:
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
    return LineFit(alpha, beta, r2_score(ts, pred), len(xs), _max_rel(ts, pred))


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
            pw = Piecewise(hi[0][0], a, b, r2_score(ts_sorted, pred), _max_rel(ts_sorted, pred))
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


def rel_err_pct(predicted: float, measured: float) -> float:
    """|predicted - measured| / measured in percent."""
    return 100.0 * abs(predicted - measured) / measured if measured > 0 else 0.0


def fit_correction(pairs: dict[str, list[tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    """Per kind, (alpha µs, scale) of measured = alpha + scale * composed, least squares on
    relative error over (composed µs, measured µs) pairs of the profiled shapes
    (:func:`moesched.costs.fit.fit_line`); kinds with fewer than 3 pairs keep (0, 1)."""
    out = {}
    for kind, ps in pairs.items():
        ps = [(c, m) for c, m in ps if c > 0 and m > 0]
        if len(ps) >= 3:
            line = fit_line([c for c, _ in ps], [m for _, m in ps])
            if line.beta > 0:
                out[kind] = (round(line.alpha_us, 4), round(line.beta, 6))
    return out


def fit_dtype_corrections(rows: Iterable[tuple[str, str, float, float]]
                          ) -> tuple[dict[str, tuple[float, float]], dict[str, dict[str, tuple[float, float]]]]:
    """The operator composition's corrections (:func:`fit_correction`) from (dtype, kind,
    composed µs, measured µs) rows of timed tasks: the common one, fitted on the dtype with
    the most rows, and one per other dtype that has a fit of its own (``ops.correction`` and
    ``ops.dtype_correction`` of :class:`moesched.optables.OpTables`)."""
    by: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for dt, kind, composed, measured in rows:
        by.setdefault(dt, {}).setdefault(kind, []).append((composed, measured))
    if not by:
        return {}, {}
    main = most_rows(by)
    others = {dt: fit_correction(p) for dt, p in sorted(by.items()) if dt != main}
    return fit_correction(by[main]), {dt: c for dt, c in others.items() if c}


def most_rows(groups: dict[str, dict[str, list[Any]]]) -> str:
    """The key of ``groups`` ({dtype: {kind: rows}}) with the most rows in all (ties: the
    first in sorted order; "" when empty): the dtype whose fits are the common ones."""
    return max(sorted(groups), key=lambda k: sum(map(len, groups[k].values())), default="")
