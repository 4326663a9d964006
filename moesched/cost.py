"""One measured cost curve of a profile: ``t(x) = alpha_us + beta_us_per_unit * x``, or
piecewise-linear interpolation in measured ``points`` (:class:`Cost`), and the checked
parse of a JSON number (:func:`number`). x is in the unit of the curve (FLOPs, bytes,
tokens or copies; see :mod:`moesched.profile`), times are µs.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from moesched.errors import MoeschedError

#: Largest magnitude of any number in a profile (µs, FLOPs, bytes); beyond it sums overflow.
MAX_MAGNITUDE = 1e30


@dataclass(frozen=True)
class Cost:
    """t(x) = alpha_us + beta_us_per_unit * x, or interpolation in measured ``points``."""

    alpha_us: float
    beta_us_per_unit: float
    points: tuple[tuple[float, float], ...] = ()
    r2: float | None = None
    _xs: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.points:
            pts = tuple(sorted((float(x), float(y)) for x, y in self.points))
            object.__setattr__(self, "points", pts)
            object.__setattr__(self, "_xs", tuple(p[0] for p in pts))

    def __call__(self, x: float) -> float:
        """Time in µs for x units of work (FLOPs or bytes); 0 work costs 0."""
        if x <= 0:
            return 0.0
        pts = self.points
        if len(pts) >= 2 and pts[0][0] <= x <= pts[-1][0]:
            i = bisect.bisect_left(self._xs, x)
            if pts[i][0] == x:
                return pts[i][1]
            (x0, y0), (x1, y1) = pts[i - 1], pts[i]
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        return max(self.alpha_us + self.beta_us_per_unit * x, 0.0)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"alpha_us": self.alpha_us, "beta_us_per_unit": self.beta_us_per_unit}
        if self.points:
            d["points"] = [list(p) for p in self.points]
        if self.r2 is not None:
            d["r2"] = self.r2
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Cost":
        """Parse and check one cost; ``where`` names it in errors (e.g. ``compute.attn_fwd``)."""
        if not isinstance(d, dict) or not {"alpha_us", "beta_us_per_unit"} <= set(d) or \
                not set(d) <= {"alpha_us", "beta_us_per_unit", "points", "r2"}:
            raise MoeschedError(f"profile: {where} must have keys alpha_us, beta_us_per_unit[, points, r2]")
        pts_d = d.get("points", [])
        if not isinstance(pts_d, list) or not all(isinstance(p, list) and len(p) == 2 for p in pts_d):
            raise MoeschedError(f"profile: {where}.points must be a list of [x, us] pairs")
        a = number(d["alpha_us"], f"{where}.alpha_us")
        b = number(d["beta_us_per_unit"], f"{where}.beta_us_per_unit")
        pts = tuple((number(x, f"{where}.points[{i}][0]"), number(y, f"{where}.points[{i}][1]"))
                    for i, (x, y) in enumerate(pts_d))
        r2 = None if d.get("r2") is None else number(d["r2"], f"{where}.r2")
        if b < 0 or any(y < 0 or x < 0 for x, y in pts):
            raise MoeschedError(f"profile: {where} has a negative cost")
        if b == 0 and a <= 0 and not any(y > 0 for _, y in pts):
            raise MoeschedError(f"profile: {where} is zero for every size (alpha_us <= 0, beta_us_per_unit 0, "
                                "no positive point); a measured cost is positive")
        return cls(a, b, pts, r2)


def number(x: Any, where: str) -> float:
    """``x`` as a float if it is a finite JSON number (not a boolean) of sane magnitude."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise MoeschedError(f"profile: {where} has a non-numeric value {x!r:.40}")
    try:
        v = float(x)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v) or abs(v) > MAX_MAGNITUDE:
        raise MoeschedError(f"profile: {where} is {v:g}, outside +-{MAX_MAGNITUDE:g}")
    return v
