"""Host issue costs: how long the executor's host thread takes to launch each task.

Measured on 4 x H200 (``docs/history.md``), the executor is host-bound at the
validation shapes: a task's kernels start about ``lag_us`` after the host starts launching
them, and the task cannot end before its last kernel is launched. Attention backward, for
instance, takes 2.0-5.0 ms of host time (by regime) for 1.0 ms of GPU work. A simulator that
prices GPU time alone cannot see that; this module holds what the profiler measures
(:mod:`executor.profiling.host`, fitted by :mod:`moesched.costs.host`) so that :mod:`moesched.sim` can model the host as one more
serial resource per rank, fed in plan order.

The model (used by strict simulations, i.e. replays of a plan's order):

* the host issues the tasks one after the other in plan order; issuing task i takes
  ``alpha + per_unit * x_i + per_chunk * r_i`` µs for its kind (x: the task's work,
  FLOPs of a compute task and bytes of a collective, :func:`host_features`; r: the pipeline degree of its layer and phase,
  1 for gradient chunks). Measured on 4 x H200 the degree matters on its own: attention
  backward of DeepSeek-shaped layers took 2.5 ms of host time at r_bwd = 1 and 3.3 ms
  at r_bwd = 2, on the same tokens;
* a compute task starts on the GPU no earlier than ``lag_us`` after its issue starts, and
  ends no earlier than ``lag_us`` after its issue ends;
* a collective starts no earlier than ``lag_us`` after its issue ends on every rank;
* the first issue of a dispatch blocks the host until the attention task that routed its
  tokens has finished on the GPU (the executor waits there for the routing counts);
* the step starts with ``step_setup`` µs before the first issue and ends ``step_finish`` µs
  after its last task (x = the parameter bytes of one rank, :func:`step_x`; :data:`STEP_KINDS`;
  the finish a constant, :data:`CONSTANT_KINDS`).

Profile section (optional key ``host``)::

    "host": {"lag_us": 30.0, "x_unit": "work",            # "tokens": x in tokens and layers
             "kinds": {KIND: COST, ...},                 # pooled over shapes of the main dtype
             "shapes": {SHAPE_KEY: {KIND: COST, ...}},  # per model shape
             "dtypes": {DTYPE: {KIND: COST, ...}}}      # optional: pooled over another dtype's shapes
    COST = {"alpha_us": a, "per_unit_us": b, "per_chunk_us": c, "r2": r2}

KIND: a compute kind or dispatch, combine, combine_bwd, dispatch_bwd, grad_ar, step_setup,
step_finish. A kind the profile lacks costs 0 µs of host time. A shape the profile did not
calibrate takes its dtype's pooled costs where the profile calibrated shapes of that dtype
(``dtypes``), else ``kinds`` (fitted on the dtype most shapes were calibrated in): the
executor launches one GEMM per local expert outside bf16 (:func:`executor.ffn.grouped`), so
an fp32 expert task takes 2-3x the host time of a bf16 one (one H200,
``results/h200x1/dtype-host``), and pooling both priced neither.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from moesched.cost import number
from moesched.errors import MoeschedError
from moesched.kinds import A2A_KINDS, ALL_COMPUTE_KINDS
from moesched.models import DTYPE_BYTES as MODEL_DTYPES, dtype_of_shape
#: Per step, not per task (x: :func:`step_x`): the setup before the first issue
#: (gradient buffers zeroed, layer state allocated) and the finish after the last task
#: (the loss read back and averaged over ranks).
STEP_KINDS = ("step_setup", "step_finish")
#: Kinds priced as a constant, with no slope in x or r, at the lower quartile of their
#: samples: the step's finish reads the loss back (on many ranks, averaged first), the same
#: few kernels at any size. Measured on one H200, the calibration steps (the third step of a
#: fresh module) sometimes stall there for 0.3-1.8 ms (``results/h200x1/passes9``: 9 of the
#: 12 four-layer samples of the GPT shape, every one of a chunked plan; ``passes7``: 8 of 12
#: of the DeepSeek shape), while the validation steps of the same shapes ended in 85-230 µs
#: (the last steps of 682 validation runs: 99% under 0.3 ms); a line through the medians at
#: one and four layers turned those stalls into a slope and priced the four-layer GPT step's
#: finish at 0.8 ms.
CONSTANT_KINDS = ("step_finish",)
HOST_KINDS = ALL_COMPUTE_KINDS + A2A_KINDS + ("grad_ar",) + STEP_KINDS


#: Units of a host cost's x: "work" (the task's FLOPs; bytes of a collective; step kinds:
#: the parameter bytes one rank holds) or, in profiles measured before work units, "tokens"
#: (tokens of the task, bytes of a gradient chunk; step kinds: the model's layers).
X_UNITS = ("work", "tokens")
MAX_LAG_US = 1e6  # the longest launch lag accepted (µs): a second


def host_features(kind: str, attrs: Mapping[str, Any], knobs: Any, x_unit: str = "work") -> tuple[float, int]:
    """(x, r) of a task's host cost: its work (FLOPs, or bytes of a collective; x_unit
    "work") or tokens (x_unit "tokens"; bytes of a gradient chunk), and the pipeline degree of
    its layer in its phase (1 for gradient chunks). ``knobs``: the graph's Knobs.

    Work, not tokens: measured on one H200 (``results/h200x1``), a task's issue time grows
    with the GPU work queued ahead of it, so a per-token slope fitted on the profiled shapes
    overprices a shape with fewer FLOPs per token (top-1 GPT experts: held-out step error
    23.9 % by tokens, 6.1 % by work)."""
    if kind == "grad_ar":
        return float(attrs["work"]), 1
    layer, phase = int(attrs["layer"]), attrs["phase"]
    r = knobs.r_fwd[layer] if phase == "fwd" and layer < len(knobs.r_fwd) else \
        knobs.r_bwd[layer] if layer < len(knobs.r_bwd) else 1
    return float(attrs["work"] if x_unit == "work" else attrs.get("tokens", 0)), int(r)


def step_x(layers: int, param_bytes: int, x_unit: str) -> float:
    """x of the step kinds: the parameter bytes one rank holds (x_unit "work": the setup
    zeroes their gradient buffers, a memset at HBM speed, about 0.34 ns per byte on one H200)
    or the model's layers (x_unit "tokens")."""
    return float(param_bytes if x_unit == "work" else layers)


@dataclass(frozen=True)
class HostCost:
    """Host µs of one task kind: alpha_us + per_unit_us * x + per_chunk_us * r."""

    alpha_us: float
    per_unit_us: float = 0.0
    per_chunk_us: float = 0.0
    r2: float | None = None

    def __call__(self, x: float, r: int = 1) -> float:
        return max(self.alpha_us + self.per_unit_us * x + self.per_chunk_us * r, 0.0)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"alpha_us": self.alpha_us, "per_unit_us": self.per_unit_us,
                             "per_chunk_us": self.per_chunk_us}
        return d if self.r2 is None else dict(d, r2=self.r2)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "HostCost":
        keys = {"alpha_us", "per_unit_us", "per_chunk_us"}
        if not isinstance(d, dict) or not keys <= set(d) <= keys | {"r2"}:
            raise MoeschedError(f"profile: {where} must have keys alpha_us, per_unit_us, per_chunk_us[, r2]")
        vals = [number(d[k], f"{where}.{k}") for k in ("alpha_us", "per_unit_us", "per_chunk_us")]
        r2 = None if d.get("r2") is None else number(d["r2"], f"{where}.r2")
        if vals[1] < 0 or vals[2] < 0:
            raise MoeschedError(f"profile: {where} has a negative per-unit or per-chunk cost")
        return cls(*vals, r2=r2)


def _each(groups: dict[str, dict[str, HostCost]], fn: Callable[[HostCost], Any]) -> dict[str, dict[str, Any]]:
    """{group: {kind: fn(cost)}} of costs grouped by shape or dtype."""
    return {g: {k: fn(c) for k, c in by.items()} for g, by in groups.items()}


@dataclass(frozen=True)
class HostCosts:
    """Host issue costs of one cluster (see the module docstring); µs."""

    lag_us: float
    kinds: dict[str, HostCost]
    shapes: dict[str, dict[str, HostCost]] = field(default_factory=dict)
    x_unit: str = "work"
    dtypes: dict[str, dict[str, HostCost]] = field(default_factory=dict)

    def us(self, kind: str, x: float, r: int = 1, shape: str | None = None) -> float:
        """Host µs to issue a task of ``kind`` on x (tokens or bytes) at degree r; 0 if unmeasured."""
        by = self.shapes.get(shape) if shape else None
        cost = by.get(kind) if by else None
        if cost is None and shape:
            cost = self.dtypes.get(dtype_of_shape(shape), {}).get(kind)
        if cost is None:
            cost = self.kinds.get(kind)
        return 0.0 if cost is None else cost(x, r)

    def scaled(self, f: float) -> "HostCosts":
        """Every issue cost times f (a host running 1/f as fast; the lag unchanged), e.g.
        f = host probe now / host probe when profiled (``executor.profiling.timing.host_probe_us``)."""
        def sc(c: HostCost) -> HostCost:
            return HostCost(c.alpha_us * f, c.per_unit_us * f, c.per_chunk_us * f, c.r2)
        return replace(self, kinds={k: sc(c) for k, c in self.kinds.items()}, shapes=_each(self.shapes, sc),
                       dtypes=_each(self.dtypes, sc))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"lag_us": self.lag_us, "kinds": {k: c.to_dict() for k, c in self.kinds.items()},
                             "shapes": _each(self.shapes, HostCost.to_dict)}
        if self.dtypes:
            d["dtypes"] = _each(self.dtypes, HostCost.to_dict)
        return d if self.x_unit == "tokens" else {"lag_us": self.lag_us, "x_unit": self.x_unit, **d}

    @classmethod
    def from_dict(cls, d: Any, source: str = "profile") -> "HostCosts":
        if not isinstance(d, dict) or not {"lag_us", "kinds", "shapes"} <= set(d) <= {"lag_us", "kinds", "shapes", "x_unit",
                                                                                     "dtypes"}:
            raise MoeschedError(f"{source}: host must have the keys lag_us, kinds, shapes[, x_unit, dtypes]")
        x_unit = d.get("x_unit", "tokens")  # profiles from before work units have no x_unit
        if x_unit not in X_UNITS:
            raise MoeschedError(f"{source}: host.x_unit must be one of {list(X_UNITS)}, got {x_unit!r}")
        lag = d["lag_us"]
        if isinstance(lag, bool) or not isinstance(lag, (int, float)) or not 0 <= lag <= MAX_LAG_US:
            raise MoeschedError(f"{source}: host.lag_us must be a number in [0, {MAX_LAG_US:g}], got {lag!r:.40}")

        def costs(by: Any, where: str) -> dict[str, HostCost]:
            if not isinstance(by, dict) or not set(by) <= set(HOST_KINDS):
                raise MoeschedError(f"{source}: {where} must map task kinds in {list(HOST_KINDS)} to costs")
            return {k: HostCost.from_dict(c, f"{where}.{k}") for k, c in by.items()}

        shapes = d["shapes"]
        if not isinstance(shapes, dict):
            raise MoeschedError(f"{source}: host.shapes must map shape keys to {{kind: cost}}")
        dtypes = d.get("dtypes", {})
        if not isinstance(dtypes, dict) or not set(dtypes) <= set(MODEL_DTYPES):
            raise MoeschedError(f"{source}: host.dtypes must map dtypes in {list(MODEL_DTYPES)} to {{kind: cost}}")
        return cls(float(lag), costs(d["kinds"], "host.kinds"),
                   {s: costs(by, f"host.shapes.{s}") for s, by in shapes.items()}, x_unit,
                   {dt: costs(by, f"host.dtypes.{dt}") for dt, by in dtypes.items()})
