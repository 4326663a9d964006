"""Operator cost tables of a profile, and a task's cost composed from its operators.

The profiler (:mod:`executor.profiling.ops`) times GEMMs, grouped expert GEMMs, attention
and memory-bound kernels over grids per dtype; a task of any model shape then costs the sum
of its operators (:func:`moesched.ops.task_ops`), each interpolated in its table, times a
per-kind correction fitted on the profiled shapes' measured tasks
(:func:`moesched.costs.fit.fit_correction`: what the recipe leaves out, such as launch gaps between kernels),
times the in-situ factor of that kind for that dtype where the profile has one
(:mod:`moesched.costs.calibrate`).

Profile section (optional key ``ops``)::

    "ops": {"tables": {DTYPE: {"gemm": [[m, n, k, us], ...],
                               "grouped": [[groups, rows, n, k, wgrad, skew, us], ...],
                               "attention": [[bh, seq, head_dim, causal, backward, us], ...],
                               "mem": {CLASS: [[bytes, us], ...], ...}}, ...},
            "correction": {KIND: {"alpha_us": a, "scale": s}, ...},
            "dtype_correction": {DTYPE: {KIND: {"alpha_us": a, "scale": s}, ...}, ...},  # optional
            "insitu": {DTYPE: {KIND: factor, ...}, ...},   # optional
            "runs_as": "fp32",      # optional: the device runs every model in this dtype (CPU)
            "recipe": 3}            # optional (default 1): the operator recipe version

DTYPE is a model dtype (bf16, fp16, fp32); CLASS one of :data:`moesched.ops.MEM_CLASSES`;
booleans are 0/1. A task of KIND composed in DTYPE's tables costs
``insitu[DTYPE][KIND] * (alpha_us + scale * sum of its operators' µs)``, (alpha_us, scale)
from ``dtype_correction[DTYPE][KIND]`` where the profiler timed tasks in that dtype and
fitted one, else from ``correction`` (fitted on the dtype most tasks were timed in: what
the recipe leaves out weighs differently against fp32 GEMMs than against bf16 ones). ``insitu``
(factors in (0, 1000], each DTYPE one of ``tables``) holds the in-situ factors measured on
shapes of that dtype (:func:`moesched.costs.calibrate.apply_factors`); a kind or dtype
without one is unscaled. Profiles calibrated before it folded one factor per kind into
``correction`` for every dtype. ``recipe`` is the version of :func:`moesched.ops.task_ops`
the corrections were fitted against (:data:`moesched.ops.RECIPE`); tasks are composed with
that version, so a profile prices as it did when fitted until it is refitted
(``moesched profile --refit``, :func:`moesched.costs.build.refit`).

**Interpolation.** Each table is a grid over its size axes (GEMM: m, n, k; grouped:
groups, rows, n, k; attention: bh, seq, head_dim; memory: bytes). Between grid values the
log of the time is interpolated multilinearly in the logs of the sizes (log-log
interpolation on the 2^d nearest grid points). Below an axis's smallest value the time is
the edge's (a kernel does not get faster than its smallest measured size: launch floor);
above its largest it grows as the work does, time per FLOP (per byte) held at the edge
(GEMM and grouped: linear in every size; attention: linear in bh and head_dim, quadratic
in seq). A grid point the profiler skipped (over its size caps) takes the nearest measured
point's time scaled the same way. Grouped GEMMs on uneven groups (``skew`` > 0) are the
even time times the measured uneven/even ratio at that skew (linear in skew between
measured skews), its excess over 1 scaled by log(groups) / log(G0) below the smallest group
count G0 measured uneven (one group cannot be uneven).
"""
from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

from moesched.errors import MoeschedError
from moesched.kinds import ALL_COMPUTE_KINDS
from moesched.ops import MEM_CLASSES, RECIPE, Attention, Gemm, GroupedGemm, MemOp, Op, copies_of, saved_concat_ops, work_ops

if TYPE_CHECKING:
    from moesched.models import MoEModel

DTYPES = ("bf16", "fp16", "fp32")
#: Columns of each table (the last is µs) and the work exponent of each size axis.
COLUMNS = {"gemm": ("m", "n", "k"), "grouped": ("groups", "rows", "n", "k", "wgrad", "skew"),
           "attention": ("bh", "seq", "head_dim", "causal", "backward")}
EXPONENTS = {"gemm": (1.0, 1.0, 1.0), "grouped": (1.0, 1.0, 1.0, 1.0), "attention": (1.0, 2.0, 1.0), "mem": (1.0,)}


class GridTable:
    """Times (µs) measured on points of a grid of size axes; :meth:`__call__` interpolates
    (module docstring). ``expo``: the work exponent of each axis."""

    def __init__(self, points: dict[tuple[float, ...], float], expo: Sequence[float]):
        if not points:
            raise ValueError("empty table")
        self.points = {tuple(map(float, p)): float(t) for p, t in points.items()}
        self.expo = tuple(expo)
        self.axes = [sorted({p[i] for p in self.points}) for i in range(len(self.expo))]
        self._logt: dict[tuple[float, ...], float] = {p: math.log(t) for p, t in self.points.items()}

    def _log_at(self, p: tuple[float, ...]) -> float:
        """log µs at grid point p; a point not measured from the nearest measured one, scaled by work."""
        v = self._logt.get(p)
        if v is None:
            near = min(self.points, key=lambda q: sum(abs(math.log(a / b)) for a, b in zip(p, q)))
            v = self._logt[near] + sum(e * math.log(a / b) for e, a, b in zip(self.expo, p, near))
            self._logt[p] = v
        return v

    def __call__(self, q: Sequence[float]) -> float:
        """Interpolated µs at sizes q (one per axis)."""
        brackets, scale = [], 0.0
        for x, ax, e in zip(q, self.axes, self.expo):
            x = max(float(x), 1e-9)
            if x <= ax[0]:
                brackets.append((ax[0], ax[0], 0.0))
            elif x >= ax[-1]:
                brackets.append((ax[-1], ax[-1], 0.0))
                scale += e * math.log(x / ax[-1])
            else:
                i = bisect.bisect_right(ax, x)
                lo, hi = ax[i - 1], ax[i]
                brackets.append((lo, hi, math.log(x / lo) / math.log(hi / lo)))
        total = 0.0
        for corner in range(1 << len(brackets)):
            w, p = 1.0, []
            for j, (lo, hi, t) in enumerate(brackets):
                up = corner >> j & 1
                w *= t if up else 1.0 - t
                p.append(hi if up else lo)
            if w > 0:
                total += w * self._log_at(tuple(p))
        return math.exp(min(total + scale, 690.0))  # beyond ~1e300 µs: held there


def _rows(x: Any, width: int, where: str) -> list[tuple[float, ...]]:
    """A table's rows: lists of ``width`` finite non-negative numbers, sizes positive, µs positive."""
    if not isinstance(x, list) or not x:
        raise MoeschedError(f"profile: {where} must be a non-empty list of rows")
    out = []
    for i, r in enumerate(x):
        if not isinstance(r, list) or len(r) != width or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1e30
                for v in r):
            raise MoeschedError(f"profile: {where}[{i}] must be {width} finite non-negative numbers")
        if r[-1] <= 0:
            raise MoeschedError(f"profile: {where}[{i}] has a non-positive time")
        out.append(tuple(float(v) for v in r))
    return out


def _positive(rows: list[tuple[float, ...]], axes: Sequence[int], where: str) -> None:
    for i, r in enumerate(rows):
        if any(r[a] <= 0 for a in axes):
            raise MoeschedError(f"profile: {where}[{i}] has a size that is not positive")


@dataclass
class DtypeTables:
    """The tables of one dtype, as rows (see the module docstring) and their grids."""

    gemm: list[tuple[float, ...]] = field(default_factory=list)
    grouped: list[tuple[float, ...]] = field(default_factory=list)
    attention: list[tuple[float, ...]] = field(default_factory=list)
    mem: dict[str, list[tuple[float, ...]]] = field(default_factory=dict)
    _grids: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "DtypeTables":
        if not isinstance(d, dict) or not {"gemm", "mem"} <= set(d) <= {"gemm", "grouped", "attention", "mem"}:
            raise MoeschedError(f"profile: {where} must have gemm and mem tables (and grouped, attention)")
        t = cls(gemm=_rows(d["gemm"], 4, f"{where}.gemm"))
        _positive(t.gemm, (0, 1, 2), f"{where}.gemm")
        if "grouped" in d:
            t.grouped = _rows(d["grouped"], 7, f"{where}.grouped")
            _positive(t.grouped, (0, 1, 2, 3), f"{where}.grouped")
        if "attention" in d:
            t.attention = _rows(d["attention"], 6, f"{where}.attention")
            _positive(t.attention, (0, 1, 2), f"{where}.attention")
        if not isinstance(d["mem"], dict) or "elementwise" not in d["mem"] or not set(d["mem"]) <= set(MEM_CLASSES):
            raise MoeschedError(f"profile: {where}.mem must map classes {list(MEM_CLASSES)} (elementwise "
                                "required) to [bytes, us] rows")
        t.mem = {c: _rows(r, 2, f"{where}.mem.{c}") for c, r in d["mem"].items()}
        for c, r in t.mem.items():
            _positive(r, (0,), f"{where}.mem.{c}")
        return t

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"gemm": [list(r) for r in self.gemm]}
        if self.grouped:
            d["grouped"] = [list(r) for r in self.grouped]
        if self.attention:
            d["attention"] = [list(r) for r in self.attention]
        d["mem"] = {c: [list(r) for r in rows] for c, rows in self.mem.items()}
        return d

    def _grid(self, key: Any) -> Any:
        g = self._grids.get(key)
        if g is None:
            g = self._grids[key] = self._make(key)
        return g

    def _make(self, key: Any) -> Any:
        name = key[0]
        if name == "gemm":
            return GridTable({r[:3]: r[3] for r in self.gemm}, EXPONENTS["gemm"])
        if name == "mem":
            return GridTable({r[:1]: r[1] for r in self.mem[key[1]]}, EXPONENTS["mem"])
        if name == "attention":
            rows = [r for r in self.attention if (r[3] > 0) == key[1] and (r[4] > 0) == key[2]] or \
                [r for r in self.attention if (r[4] > 0) == key[2]]
            return GridTable({r[:3]: r[5] for r in rows}, EXPONENTS["attention"]) if rows else None
        if name == "grouped":
            rows = [r for r in self.grouped if (r[4] > 0) == key[1] and r[5] == 0]
            return GridTable({r[:4]: r[6] for r in rows}, EXPONENTS["grouped"]) if rows else None
        even = {(r[:5]): r[6] for r in self.grouped if r[5] == 0}   # ("skew",): [(skew, ratio)]
        by: dict[float, list[float]] = {}
        for r in self.grouped:
            if r[5] > 0 and r[:5] in even:
                by.setdefault(r[5], []).append(r[6] / even[r[:5]])
        return [(0.0, 1.0)] + sorted((s, statistics.median(v)) for s, v in by.items())

    def skew_factor(self, skew: float, groups: float | None = None) -> float:
        """Uneven / even time of a grouped GEMM whose groups spread by ``skew``: the
        measured ratio (linear in skew). One group cannot be uneven, so below the smallest
        group count measured uneven (G0) the excess over 1 shrinks as log(groups) / log(G0)."""
        pts = self._grid(("skew",))
        if skew <= 0 or len(pts) < 2:
            return 1.0
        f = pts[-1][1]
        for (s0, f0), (s1, f1) in zip(pts, pts[1:]):
            if skew <= s1:
                f = f0 + (f1 - f0) * (skew - s0) / (s1 - s0)
                break
        g0 = min((r[0] for r in self.grouped if r[5] > 0), default=1.0)
        if groups is not None and 1.0 <= groups < g0:
            f = 1.0 + (f - 1.0) * math.log(groups) / math.log(g0)
        return f

    def op_us(self, op: Op) -> float:
        """µs of one operator."""
        if isinstance(op, Gemm):
            return self._grid(("gemm",))((op.m, op.n, op.k)) if op.m and op.n and op.k else 0.0
        if isinstance(op, GroupedGemm):
            if op.rows <= 0:
                return 0.0
            g = self._grid(("grouped", op.wgrad)) if self.grouped else None
            if g is None:  # no grouped table: one GEMM per group
                one = Gemm(op.k, op.n, round(op.rows)) if op.wgrad else Gemm(round(op.rows), op.n, op.k)
                return op.groups * self.op_us(one)
            return g((op.groups, op.rows, op.n, op.k)) * self.skew_factor(op.skew, op.groups)
        if isinstance(op, Attention):
            g = self._grid(("attention", op.causal, op.backward)) if self.attention else None
            if g is None:
                raise MoeschedError("profile: ops tables have no attention table")
            return g((op.bh, op.seq, op.head_dim))
        if isinstance(op, MemOp):
            if op.nbytes <= 0:
                return 0.0
            cls = op.op if op.op in self.mem else "elementwise"
            return self._grid(("mem", cls))((op.nbytes,))
        raise TypeError(f"unknown operator {op!r}")


#: In-situ factors per dtype of the tables and compute kind: {dtype: {kind: factor}}.
InsituFactors = dict[str, dict[str, float]]


def _insitu(d: Any, tables: dict[str, DtypeTables]) -> InsituFactors:
    """The ``insitu`` key, validated: dtypes of ``tables`` to kinds to factors in (0, 1000]."""
    if not isinstance(d, dict) or not set(d) <= set(tables):
        raise MoeschedError(f"profile: ops.insitu must map dtypes of ops.tables {sorted(tables)} to {{kind: factor}}")
    out: InsituFactors = {}
    for dt, by in d.items():
        if not isinstance(by, dict) or not set(by) <= set(ALL_COMPUTE_KINDS):
            raise MoeschedError(f"profile: ops.insitu.{dt} must map kinds {list(ALL_COMPUTE_KINDS)} to factors")
        for k, f in by.items():
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1e3:
                raise MoeschedError(f"profile: ops.insitu.{dt}.{k} must be a factor in (0, 1000], not {f!r}")
        out[dt] = {k: float(f) for k, f in by.items()}
    return out


def _corrections(d: Any, where: str) -> dict[str, tuple[float, float]]:
    """{kind: (alpha µs, scale)} parsed from {KIND: {alpha_us, scale}} at ``where``."""
    if not isinstance(d, dict) or not set(d) <= set(ALL_COMPUTE_KINDS):
        raise MoeschedError(f"profile: {where} must map kinds {list(ALL_COMPUTE_KINDS)} to corrections")
    corr = {}
    for k, c in d.items():
        ok = isinstance(c, dict) and set(c) == {"alpha_us", "scale"} and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and -1e30 <= v <= 1e30 for v in c.values())
        if not ok or not (0 <= c["alpha_us"] <= 1e9 and 0 < c["scale"] <= 1e3):
            raise MoeschedError(f"profile: {where}.{k} must be {{alpha_us: 0..1e9, scale: (0, 1000]}}")
        corr[k] = (float(c["alpha_us"]), float(c["scale"]))
    return corr


def _corrections_dict(corr: dict[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    return {k: {"alpha_us": a, "scale": s} for k, (a, s) in corr.items()}


@dataclass
class OpTables:
    """A profile's ``ops`` section: tables per dtype, the per-kind correction and the
    in-situ factors per dtype and kind (dimensionless)."""

    tables: dict[str, DtypeTables]
    correction: dict[str, tuple[float, float]] = field(default_factory=dict)  # kind -> (alpha µs, scale)
    runs_as: str | None = None
    insitu: InsituFactors = field(default_factory=dict)
    dtype_correction: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # dtype -> kind -> ...
    recipe: int = 1  # the operator recipe version the corrections were fitted with (moesched.ops.RECIPE)

    @classmethod
    def from_dict(cls, d: Any, source: str = "profile") -> "OpTables":
        try:
            return cls._parse(d)
        except MoeschedError as e:
            raise MoeschedError(str(e).replace("profile:", f"{source}:", 1)) from None

    @classmethod
    def _parse(cls, d: Any) -> "OpTables":
        if not isinstance(d, dict) or not {"tables"} <= set(d) <= {"tables", "correction", "dtype_correction", "runs_as",
                                                                   "insitu", "recipe"}:
            raise MoeschedError("profile: ops must have keys tables[, correction, dtype_correction, runs_as, insitu, recipe]")
        recipe = d.get("recipe", 1)
        if isinstance(recipe, bool) or recipe not in range(1, RECIPE + 1):
            raise MoeschedError(f"profile: ops.recipe must be an operator recipe version 1..{RECIPE}, not {recipe!r}")
        if not isinstance(d["tables"], dict) or not d["tables"] or not set(d["tables"]) <= set(DTYPES):
            raise MoeschedError(f"profile: ops.tables must map dtypes {list(DTYPES)} to tables")
        tables = {k: DtypeTables.from_dict(v, f"ops.tables.{k}") for k, v in d["tables"].items()}
        corr = _corrections(d.get("correction", {}), "ops.correction")
        by_d = d.get("dtype_correction", {})
        if not isinstance(by_d, dict) or not set(by_d) <= set(tables):
            raise MoeschedError("profile: ops.dtype_correction must map dtypes of ops.tables to corrections")
        by_dtype = {dt: _corrections(c, f"ops.dtype_correction.{dt}") for dt, c in by_d.items()}
        runs_as = d.get("runs_as")
        if runs_as is not None and runs_as not in tables:
            raise MoeschedError("profile: ops.runs_as must name a dtype of ops.tables")
        return cls(tables, corr, runs_as, _insitu(d.get("insitu", {}), tables), by_dtype, recipe)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tables": {k: t.to_dict() for k, t in self.tables.items()}}
        if self.correction:
            d["correction"] = _corrections_dict(self.correction)
        if self.dtype_correction:
            d["dtype_correction"] = {dt: _corrections_dict(c) for dt, c in self.dtype_correction.items()}
        if self.runs_as:
            d["runs_as"] = self.runs_as
        if self.insitu:
            d["insitu"] = {dt: dict(by) for dt, by in self.insitu.items()}
        if self.recipe != 1:
            d["recipe"] = self.recipe
        return d

    def run_dtype(self, model_dtype: str) -> str | None:
        """The dtype a model of ``model_dtype`` runs in here, if its tables exist, else None."""
        dt = self.runs_as or model_dtype
        return dt if dt in self.tables else None

    def ops_us(self, dtype: str, ops: Sequence[Op]) -> float:
        """Sum of the operators' µs in ``dtype``'s tables (no correction)."""
        t = self.tables[dtype]
        return sum(t.op_us(o) for o in ops)

    def correction_of(self, kind: str, dtype: str) -> tuple[float, float]:
        """(alpha µs, scale) of ``kind`` in ``dtype``: the dtype's own fit, else the common one."""
        return self.dtype_correction.get(dtype, {}).get(kind) or self.correction.get(kind, (0.0, 1.0))

    def task_us(self, kind: str, dtype: str, ops: Sequence[Op]) -> float:
        """µs of a task of ``kind`` made of ``ops`` in ``dtype``'s tables: the corrected sum
        times the in-situ factor of (``dtype``, ``kind``) if any (0 with no operators)."""
        raw = self.ops_us(dtype, ops)
        if raw <= 0:
            return 0.0
        a, s = self.correction_of(kind, dtype)
        f = self.insitu.get(dtype, {}).get(kind)
        return a + s * raw if f is None else f * (a + s * raw)

    def work_us(self, kind: str, flops: float, model: "MoEModel", ep: int = 1) -> float:
        """µs of a ``kind`` task doing ``flops`` FLOPs of ``model`` (EP size ``ep``), composed
        from its operators (:func:`moesched.ops.work_ops`) in the dtype the model runs in here;
        requires :meth:`run_dtype` to be a dtype (else the caller uses another pricing)."""
        dtype = self.run_dtype(model.dtype)
        assert dtype is not None
        cpu = self.runs_as is not None
        ops = work_ops(kind, model, flops, ep, grouped=dtype == "bf16" and not cpu, bytes_per_elem=4 if cpu else None,
                       recipe=self.recipe)
        return self.task_us(kind, dtype, ops)

    def saved_concat_us(self, model: "MoEModel", flops: float) -> float:
        """µs of the copy of a layer's saved expert activations (:func:`moesched.ops.saved_concat_ops`)
        whose expert_dx tasks do ``flops`` FLOPs in all on a rank: the memory table's price,
        no per-kind correction (fitted on micro-benchmarked tasks, which never make the
        copy); 0 without tables for the dtype the model runs in."""
        dtype = self.run_dtype(model.dtype)
        if dtype is None:
            return 0.0
        cpu = self.runs_as is not None
        return self.ops_us(dtype, saved_concat_ops(model, copies_of("expert_dx", model, flops), 4 if cpu else None))

    def scaled(self, factors: dict[str, float]) -> "OpTables":
        """A copy with kind k's correction multiplied by factors[k], for every dtype (the
        in-situ rule of profiles calibrated before :attr:`insitu`)."""
        def scale(corr: dict[str, tuple[float, float]], every: bool) -> dict[str, tuple[float, float]]:
            out = dict(corr)
            for k, f in factors.items():
                if every or k in out:
                    a, s = out.get(k, (0.0, 1.0))
                    out[k] = (a * f, s * f)
            return out
        return replace(self, correction=scale(self.correction, True),
                       dtype_correction={dt: scale(c, False) for dt, c in self.dtype_correction.items()})

    def with_insitu(self, factors: InsituFactors, undo: bool = False) -> "OpTables":
        """A copy with :attr:`insitu` [dtype][kind] multiplied by factors[dtype][kind]
        (``undo``: divided); a factor that comes to exactly 1 is dropped, so undoing what
        was applied gives the tables back as they were."""
        out = {dt: dict(by) for dt, by in self.insitu.items()}
        for dt, by in factors.items():
            mine = out.setdefault(dt, {})
            for k, f in by.items():
                v = mine.get(k, 1.0) / f if undo else mine.get(k, 1.0) * f
                if v == 1.0:
                    mine.pop(k, None)
                else:
                    mine[k] = v
        return replace(self, insitu={dt: by for dt, by in out.items() if by})
