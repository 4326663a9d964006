"""Fitting the host issue costs of :mod:`moesched.host` to the samples the profiler takes in
real executor steps (:mod:`executor.profiling.host`): per task kind, alpha + per_unit * x +
per_chunk * r by least squares with non-negative slopes. Pure Python."""
from __future__ import annotations

import statistics

from moesched.costs.fit import most_rows, r2_score
from moesched.errors import MoeschedError
from moesched.host import CONSTANT_KINDS, HOST_KINDS, STEP_KINDS, HostCost, HostCosts
from moesched.models import DTYPE_BYTES as MODEL_DTYPES, dtype_of_shape


def _solve(rows: list[tuple[float, ...]], ts: list[float], cols: list[int]) -> list[float]:
    """Least squares of ts on the chosen columns of rows (normal equations, Gaussian
    elimination); raises ZeroDivisionError when the system is singular."""
    n = len(cols)
    a = [[sum(r[i] * r[j] for r in rows) for j in cols] + [sum(r[i] * t for r, t in zip(rows, ts))] for i in cols]
    for c in range(n):
        p = max(range(c, n), key=lambda k: abs(a[k][c]))
        if abs(a[p][c]) < 1e-12 * max(1.0, abs(a[c][c])):
            raise ZeroDivisionError
        a[c], a[p] = a[p], a[c]
        for k in range(n):
            if k != c:
                f = a[k][c] / a[c][c]
                a[k] = [u - f * v for u, v in zip(a[k], a[c])]
    return [a[i][n] / a[i][i] for i in range(n)]


def fit_host_cost(points: list[tuple[float, int, float]], constant: bool = False) -> HostCost:
    """alpha + per_unit*x + per_chunk*r by least squares on the medians per (x, r), with
    the slopes kept >= 0 (a negative or unidentifiable one is dropped and the rest refitted);
    ``constant``: alpha alone, the lower quartile of all points (:data:`moesched.host.CONSTANT_KINDS`)."""
    if constant:
        us = [us for _, _, us in points]
        q1 = statistics.quantiles(us, n=4, method="inclusive")[0] if len(us) > 1 else us[0]  # within the samples
        return HostCost(round(q1, 3), 0.0, 0.0, None)
    by: dict[tuple[float, int], list[float]] = {}
    for x, r, us in points:
        by.setdefault((x, r), []).append(us)
    keys = sorted(by)
    ts = [statistics.median(by[k]) for k in keys]
    rows = [(1.0, x, float(r)) for x, r in keys]
    cols = [0, 1, 2]
    while True:
        try:
            coef = _solve(rows, ts, cols)
        except ZeroDivisionError:  # singular (e.g. one degree only): drop the last slope
            cols.pop()
            continue
        bad = [c for c, v in zip(cols, coef) if c > 0 and v < 0]
        if not bad:
            break
        cols.remove(bad[-1])
    full = dict(zip(cols, coef))
    a, b, c = full.get(0, 0.0), full.get(1, 0.0), full.get(2, 0.0)
    r2 = r2_score(ts, [a + b * x + c * r for _, x, r in rows])
    return HostCost(round(a, 3), b, c, round(r2, 6))


def fit_host(samples: list[tuple[str, str, float, int, float]], lag_us: float, x_unit: str = "work") -> HostCosts:
    """Host costs from measured issue times: samples (shape key, kind, x, r, µs), one per
    task issue, x in ``x_unit`` (:func:`moesched.host.host_features`); per kind pooled over
    the shapes of the dtype with the most samples (:func:`fit_host_cost`), per kind for each
    other dtype, and per (shape, kind), each a pool scaled to its own samples
    (:func:`scaled_pool`). Within one shape the chunks split the work (x = the layer's work
    / r), so its samples cannot tell the slopes in x and r apart: fitted on their own (three
    points, three coefficients) they priced gpt2xl-4L's dispatch at four times the
    micro-batch at 0.90 ms, 2.7x its 0.34 ms at its own (``results/h200x1/passes9``; a
    traced step of that plan issued it in 0.39 ms, ``results/h200x1/traces-validate``). The
    step kinds, at r = 1 and x = the parameter bytes at one and four layers, are fitted on
    the shape's own samples."""
    by_dtype: dict[str, dict[str, list[tuple[float, int, float]]]] = {}
    shapes: dict[str, dict[str, list[tuple[float, int, float]]]] = {}
    for shape, kind, x, r, us in samples:
        if kind not in HOST_KINDS:
            raise MoeschedError(f"host samples: unknown task kind {kind!r}")
        dt = dtype_of_shape(shape)
        dt = dt if dt in MODEL_DTYPES else ""  # older shape keys end without a dtype
        by_dtype.setdefault(dt, {}).setdefault(kind, []).append((float(x), int(r), float(us)))
        shapes.setdefault(shape, {}).setdefault(kind, []).append((float(x), int(r), float(us)))
    main = most_rows(by_dtype)
    pool = {k: fit_host_cost(p, constant=k in CONSTANT_KINDS) for k, p in sorted(by_dtype.get(main, {}).items())}
    dtypes = {dt: scaled_pool(pool, by) for dt, by in sorted(by_dtype.items()) if dt and dt != main}

    def shape_pool(shape: str) -> dict[str, HostCost]:
        return dtypes.get(dtype_of_shape(shape), pool)
    return HostCosts(round(float(lag_us), 3), pool,
                     {s: scaled_pool(shape_pool(s), by, own=STEP_KINDS) for s, by in sorted(shapes.items())},
                     x_unit, dtypes)


def scaled_pool(base: dict[str, HostCost], samples: dict[str, list[tuple[float, int, float]]],
                own: tuple[str, ...] = ()) -> dict[str, HostCost]:
    """Pooled host costs scaled to a dtype's or a shape's samples: per kind, the ``base``
    cost times the median ratio of the samples (x, r, µs) to it, so that the slopes in work
    and degree (which one or two shapes cannot tell apart: chunks split the work) stay those
    fitted over the base's shapes; a kind the base lacks, or one of ``own``, is fitted on its
    own samples."""
    out = {}
    for kind, pts in sorted(samples.items()):
        b = base.get(kind)
        ratios = [us / b(x, r) for x, r, us in pts if b is not None and b(x, r) > 0]
        if b is None or not ratios or kind in own:
            out[kind] = fit_host_cost(pts, constant=kind in CONSTANT_KINDS)
            continue
        f = statistics.median(ratios)
        out[kind] = HostCost(round(b.alpha_us * f, 3), b.per_unit_us * f, b.per_chunk_us * f, None)
    return out
