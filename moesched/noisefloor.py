"""The noise floor of a validation run: how close any model can come to its measurements.

Two schedules that solve to the same plan (on one GPU, Tutel and ScheMoE often do) run the
same steps, so a deterministic model gives them one prediction p; measured twice, they
bound the error any model can reach on that run. Pure Python.
"""
from __future__ import annotations

from collections.abc import Iterable

from moesched.errors import MoeschedError


def floor_max_pct(measured_ms: list[float]) -> float:
    """Least max |p - a| / a over the measurements a of one plan, any p (%): at
    p = 2 a_min a_max / (a_min + a_max) both extremes are off by (a_max - a_min) / (a_max + a_min)."""
    if not measured_ms or min(measured_ms) <= 0:
        raise MoeschedError("measurements must be positive")
    lo, hi = min(measured_ms), max(measured_ms)
    return 100.0 * (hi - lo) / (hi + lo)


def floor_mean_pct(measured_ms: list[float]) -> float:
    """Least mean |p - a| / a over the measurements a of one plan, any p (%). The sum of
    |p - a| / a is convex and piecewise linear in p, so its minimum is at one of the a."""
    if not measured_ms or min(measured_ms) <= 0:
        raise MoeschedError("measurements must be positive")
    return 100.0 * min(sum(abs(p - a) / a for a in measured_ms) for p in measured_ms) / len(measured_ms)


def floors(groups: Iterable[list[float]]) -> tuple[float, float]:
    """(max floor %, mean floor % over every measurement) of measured step times (ms) grouped
    by plan, one list per plan (a plan measured once adds 0 to both)."""
    worst, total, n = 0.0, 0.0, 0
    for ms in groups:
        worst = max(worst, floor_max_pct(ms))
        total += floor_mean_pct(ms) * len(ms)
        n += len(ms)
    return worst, (total / n if n else 0.0)
