"""Host issue costs: how long the executor's host thread takes to launch each task.

Measured on 4 x H200 (``results/gpu/session3/``), the executor is host-bound at the
validation shapes: a task's kernels start about ``lag_us`` after the host starts launching
them, and the task cannot end before its last kernel is launched. Attention backward, for
instance, takes 2.0-5.0 ms of host time (by regime) for 1.0 ms of GPU work. A simulator that
prices GPU time alone cannot see that; this module holds what the profiler measures
(``executor/hostprof.py``) so that :mod:`moesched.sim` can model the host as one more
serial resource per rank, fed in plan order.

The model (used by strict simulations, i.e. replays of a plan's order):

* the host issues the tasks one after the other in plan order; issuing task i takes
  ``cost(kind_i, x_i)`` µs (x: tokens of the task; bytes of a gradient all-reduce chunk);
* a compute task starts on the GPU no earlier than ``lag_us`` after its issue starts, and
  ends no earlier than ``lag_us`` after its issue ends;
* a collective starts no earlier than ``lag_us`` after its issue ends on every rank;
* the first issue of a dispatch blocks the host until the attention task that routed its
  tokens has finished on the GPU (the executor waits there for the routing counts).

Profile section (optional key ``host``; COST as in :mod:`moesched.profile`)::

    "host": {"lag_us": 30.0,
             "kinds": {KIND: COST, ...},                 # pooled over shapes
             "shapes": {SHAPE_KEY: {KIND: COST, ...}}}  # per model shape

KIND: a compute kind or dispatch, combine, combine_bwd, dispatch_bwd, grad_ar. A kind the
profile lacks costs 0 µs of host time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from moesched.errors import MoeschedError
from moesched.profile import ALL_COMPUTE_KINDS, Cost

A2A_KINDS = ("dispatch", "combine", "combine_bwd", "dispatch_bwd")
HOST_KINDS = ALL_COMPUTE_KINDS + A2A_KINDS + ("grad_ar",)


def host_x(kind: str, attrs: Mapping[str, Any]) -> float:
    """The x of a task's host cost: its tokens, or the bytes of a gradient chunk."""
    return float(attrs["work"]) if kind == "grad_ar" else float(attrs.get("tokens", 0))


@dataclass(frozen=True)
class HostCosts:
    """Host issue costs of one cluster (see the module docstring); µs."""

    lag_us: float
    kinds: dict[str, Cost]
    shapes: dict[str, dict[str, Cost]] = field(default_factory=dict)

    def us(self, kind: str, x: float, shape: str | None = None) -> float:
        """Host µs to issue a task of ``kind`` on x (tokens or bytes); 0 if unmeasured."""
        by = self.shapes.get(shape) if shape else None
        cost = by.get(kind) if by else None
        if cost is None:
            cost = self.kinds.get(kind)
        return 0.0 if cost is None else cost(max(x, 1.0))

    def to_dict(self) -> dict[str, Any]:
        return {"lag_us": self.lag_us, "kinds": {k: c.to_dict() for k, c in self.kinds.items()},
                "shapes": {s: {k: c.to_dict() for k, c in by.items()} for s, by in self.shapes.items()}}

    @classmethod
    def from_dict(cls, d: Any, source: str = "profile") -> "HostCosts":
        if not isinstance(d, dict) or set(d) != {"lag_us", "kinds", "shapes"}:
            raise MoeschedError(f"{source}: host must have exactly the keys lag_us, kinds, shapes")
        lag = d["lag_us"]
        if not isinstance(lag, (int, float)) or lag < 0:
            raise MoeschedError(f"{source}: host.lag_us must be a number >= 0")

        def costs(by: Any, where: str) -> dict[str, Cost]:
            if not isinstance(by, dict) or not set(by) <= set(HOST_KINDS):
                raise MoeschedError(f"{source}: {where} must map task kinds in {list(HOST_KINDS)} to costs")
            return {k: Cost.from_dict(c, f"{where}.{k}") for k, c in by.items()}

        shapes = d["shapes"]
        if not isinstance(shapes, dict):
            raise MoeschedError(f"{source}: host.shapes must map shape keys to {{kind: cost}}")
        return cls(float(lag), costs(d["kinds"], "host.kinds"),
                   {s: costs(by, f"host.shapes.{s}") for s, by in shapes.items()})


def fit_host(samples: list[tuple[str, str, float, float]], lag_us: float) -> HostCosts:
    """Host costs from measured issue times: samples (shape key, kind, x, µs), one per task
    issue. Per (shape, kind) and per kind (pooled): the median at each x, then a line
    alpha + beta*x by relative least squares (:func:`moesched.fit.fit_line`); one x gives
    a constant."""
    import statistics

    from moesched.fit import fit_line

    def cost(rows: list[tuple[float, float]]) -> Cost:
        by_x: dict[float, list[float]] = {}
        for x, us in rows:
            by_x.setdefault(x, []).append(us)
        xs = sorted(by_x)
        ts = [max(statistics.median(by_x[x]), 1e-3) for x in xs]
        line = fit_line(xs, ts)
        return Cost(round(line.alpha_us, 3), line.beta, (), round(line.r2, 6))

    kinds: dict[str, list[tuple[float, float]]] = {}
    shapes: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for shape, kind, x, us in samples:
        if kind not in HOST_KINDS:
            raise MoeschedError(f"host samples: unknown task kind {kind!r}")
        kinds.setdefault(kind, []).append((float(x), float(us)))
        shapes.setdefault(shape, {}).setdefault(kind, []).append((float(x), float(us)))
    return HostCosts(round(float(lag_us), 3), {k: cost(r) for k, r in sorted(kinds.items())},
                     {s: {k: cost(r) for k, r in sorted(by.items())} for s, by in sorted(shapes.items())})
