"""In-situ calibration: what the profiler measured inside real executor steps
(:mod:`executor.profiling.host`), applied to a profile fitted from micro-benchmarks.

A micro-benchmark times one task alone; in a training step the same task runs among
others, on uneven expert loads, at the clocks of a GPU under sustained load, and a
collective waits for the slowest rank. Three corrections come from the calibration steps:

* **host issue costs** (:func:`moesched.costs.host.fit_host`) and the host-to-GPU lag;
* **all-to-alls per shape**: the in-situ time at the median rank
  (:data:`A2A_RANK_STAT`), stored as ``shapes[shape]["all_to_all@SCOPE"]``;
* **compute factors**: per shape and kind, the median ratio of a compute task's GPU time in
  a calibration step (any degree; expert_dx at degree 1 only,
  :func:`executor.profiling.host.insitu_sample`) to the micro-benchmark's cost for the same
  shape and FLOPs
  (:func:`compute_factors`), over tasks issued in full before the GPU reached them (so not
  waiting for the host, which the host model prices) and with no collective beside them
  (so not slowed by interference, which ``compute_slowdown`` prices).
  That shape's costs of the kind are scaled by it. An expert_dx factor so carries the
  layer's one-chunk copy of its saved activations; a layer run in several forward chunks
  is charged that copy apart (:func:`saved_copy_us`). ``attn_fwd`` is left alone: its
  profile cost carries the routing-count exchange (``meta.count_exchange_us``), which its
  GPU interval in a step does not hold.

**Fallback factors.** The per-kind fallback costs, which price shapes the profile did not
measure, take a median factor over shapes, where at least :data:`MIN_SHAPES` shapes have
one of the kind:

* the operator composition (:mod:`moesched.optables`) of a dtype, the median over the
  shapes that ran in it, for that dtype's tables only (``ops.insitu``). A factor is the
  dtype's trait as much as the shape's: interference, launch gaps and clocks under load
  weigh differently against kernels of another length. A dtype without calibrated shapes
  (fp32 where bf16 shapes were profiled) keeps the micro-benchmark correction alone;
* the FLOPs line ``compute[kind]``, the median over all shapes: it is fitted on the
  profiled shapes' micro-benchmarks whatever their dtype, and prices by FLOPs alone.

Profiles keep the rule they were calibrated with: without ``meta.insitu_per_dtype`` the
median over all shapes scaled every dtype's ``ops.correction``; without
``meta.insitu_min_shapes`` one shape sufficed (:func:`apply_factors` undoes each so).

The rows are kept in ``meta.samples`` so that :func:`moesched.costs.build.refit` can redo all this.
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

from moesched import work
from moesched.costs.fit import fit_cost
from moesched.costs.host import fit_host
from moesched.models import dtype_of_shape
from moesched.optables import InsituFactors
from moesched.profile import Cost, Profile

if TYPE_CHECKING:
    from moesched.models import MoEModel

#: Which in-situ all-to-all time over ranks prices a shape's all-to-alls: 0 the smallest
#: (transfer alone), 1 the median (a typical rank, its wait for the slowest included). The
#: simulator runs one rank for all, so no rank is ever late in it; the median carries the
#: straggler wait every real collective has (docs/validating.md).
A2A_RANK_STAT = 1

#: Compute kinds calibrated in situ (see the module docstring for attn_fwd).
INSITU_KINDS = ("attn_bwd", "expert_fwd", "expert_dx", "expert_dw", "shared_fwd", "shared_bwd", "loss")
MIN_SAMPLES = 3  # fewer in-situ tasks of a (shape, kind) leave its cost as benchmarked
#: Shapes that must have a factor of a kind before the per-kind fallback costs (which price
#: shapes the profile did not measure) take their median: one shape's factor is its own
#: trait (Mixtral's large expert GEMMs run 1.32x their micro-benchmark in a step, at the
#: GPU's power limit; results/h200x1/insitu-chunks), not the kind's.
MIN_SHAPES = 2
MIN_SHAPES_KEY = "insitu_min_shapes"
#: Meta key marking a profile whose operator composition takes in-situ factors per dtype
#: (``ops.insitu``); profiles without it scaled every dtype's ``ops.correction``.
PER_DTYPE_KEY = "insitu_per_dtype"
#: The group of :func:`median_factors` that pools every shape (the FLOPs line's).
ALL_SHAPES = "*"


def compute_factors(prof: Profile, rows: Sequence[Sequence[Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{shape: {kind: {"factor": median(in-situ µs / benchmark µs), "n": samples}}} from rows
    (shape key, kind, FLOPs, in-situ GPU µs) of kinds in :data:`INSITU_KINDS`, for (shape,
    kind) pairs with at least :data:`MIN_SAMPLES` rows and a benchmark cost of their own."""
    ratios: dict[tuple[str, str], list[float]] = {}
    for shape, kind, flops, us in rows:
        if kind not in INSITU_KINDS or kind not in prof.shapes.get(str(shape), {}):
            continue
        bench = prof.compute_us(str(kind), float(flops), str(shape))
        if bench > 0 and float(us) > 0:
            ratios.setdefault((str(shape), str(kind)), []).append(float(us) / bench)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (shape, kind), rs in sorted(ratios.items()):
        if len(rs) >= MIN_SAMPLES:
            out.setdefault(shape, {})[kind] = {"factor": round(statistics.median(rs), 4), "n": len(rs)}
    return out


def scaled(cost: Cost, factor: float) -> Cost:
    """``cost`` with every time multiplied by ``factor`` (line and measured points)."""
    return Cost(cost.alpha_us * factor, cost.beta_us_per_unit * factor,
                tuple((x, t * factor) for x, t in cost.points), cost.r2)


def min_shapes_of(prof: Profile) -> int:
    """How many shapes a kind needed for its fallback factor when ``prof`` was calibrated
    (``meta.insitu_min_shapes``; 1 for profiles calibrated before :data:`MIN_SHAPES`)."""
    return int(prof.meta.get(MIN_SHAPES_KEY, 1))


def per_dtype_of(prof: Profile) -> bool:
    """Whether ``prof`` was calibrated with per-dtype operator factors (``meta.insitu_per_dtype``)."""
    return bool(prof.meta.get(PER_DTYPE_KEY, False))


def table_dtype(prof: Profile, shape: str) -> str | None:
    """The dtype of ``prof``'s operator tables that a shape's tasks run in (its model dtype,
    or ``ops.runs_as``), or None where ``prof`` has no tables for it."""
    return prof.ops.run_dtype(dtype_of_shape(shape)) if prof.ops is not None else None


def median_factors(factors: dict[str, dict[str, dict[str, float]]], least: int,
                   group: Callable[[str], str | None]) -> InsituFactors:
    """{group: {kind: median factor}} over the shapes of each group (``group(shape)``; None:
    in none) that have a factor of the kind, where at least ``least`` shapes have one."""
    pooled: dict[str, dict[str, list[float]]] = {}
    for shape, by in factors.items():
        g = group(shape)
        if g is not None:
            for kind, f in by.items():
                pooled.setdefault(g, {}).setdefault(kind, []).append(f["factor"])
    out = {g: {k: statistics.median(v) for k, v in by.items() if len(v) >= least} for g, by in pooled.items()}
    return {g: by for g, by in out.items() if by}


def apply_factors(prof: Profile, factors: dict[str, dict[str, dict[str, float]]], undo: bool = False,
                  min_shapes: int | None = None, per_dtype: bool | None = None) -> Profile:
    """``prof`` with each measured (shape, kind) cost scaled by its factor and each per-kind
    fallback cost by a median factor of that kind (module docstring), where at least
    ``min_shapes`` shapes have one: the FLOPs line by the median over all shapes; the
    operator tables of a dtype by the median over that dtype's shapes (``per_dtype``), or
    every dtype's by the median over all shapes (profiles calibrated before). Defaults: the
    rules ``prof`` was calibrated with (:func:`min_shapes_of`, :func:`per_dtype_of`);
    ``undo`` divides instead."""
    shapes = {s: dict(by) for s, by in prof.shapes.items()}
    for shape, by in factors.items():
        for kind, f in by.items():
            shapes[shape][kind] = scaled(shapes[shape][kind], 1.0 / f["factor"] if undo else f["factor"])
    least = min_shapes_of(prof) if min_shapes is None else min_shapes
    line = median_factors(factors, least, lambda s: ALL_SHAPES).get(ALL_SHAPES, {})
    compute = {k: (scaled(c, 1.0 / line[k] if undo else line[k]) if k in line else c)
               for k, c in prof.compute.items()}
    ops = prof.ops
    if ops is not None and (per_dtype_of(prof) if per_dtype is None else per_dtype):
        ops = ops.with_insitu(median_factors(factors, least, lambda s: table_dtype(prof, s)), undo)
    elif ops is not None:
        ops = ops.scaled({k: 1.0 / f if undo else f for k, f in line.items()})
    return replace(prof, shapes=shapes, compute=compute, ops=ops)


def without_compute_factors(prof: Profile) -> Profile:
    """``prof`` with the compute factors of ``meta.insitu_compute`` undone: the costs as the
    micro-benchmarks gave them (validation reports its predictions with and without)."""
    out = apply_factors(prof, prof.meta.get("insitu_compute") or {}, undo=True)
    drop = ("insitu_compute", MIN_SHAPES_KEY, PER_DTYPE_KEY)
    return replace(out, meta={k: v for k, v in prof.meta.items() if k not in drop})


def a2a_costs(a2a_rows: Sequence[Sequence[Any]]) -> dict[tuple[str, str], Cost]:
    """{(shape, scope): cost} from rows (shape key, scope, bytes, smallest µs, median µs over
    ranks): medians per size of the :data:`A2A_RANK_STAT` value, then
    :func:`moesched.costs.fit.fit_cost`; a (shape, scope) measured at one size only is left out
    (one size says nothing of the others: the micro-benchmark stays)."""
    pts: dict[tuple[str, str], dict[float, list[float]]] = {}
    for row in a2a_rows:
        shape, scope, nbytes = row[:3]
        us = row[3] if len(row) == 4 else row[3 + A2A_RANK_STAT]  # 4 fields: one value per row
        pts.setdefault((str(shape), str(scope)), {}).setdefault(float(nbytes), []).append(float(us))
    out = {}
    for key, by in pts.items():
        xs = sorted(by)
        if len(xs) >= 2:
            out[key] = fit_cost(xs, [statistics.median(by[x]) for x in xs])
    return out


def with_host(prof: Profile, rows: list[Sequence[Any]], lag_us: float,
              a2a_rows: list[Sequence[Any]] | None = None,
              compute_rows: list[Sequence[Any]] | None = None, x_unit: str = "work") -> Profile:
    """``prof`` (as fitted from the micro-benchmarks) with the in-situ corrections of the
    module docstring: host costs from ``rows`` (shape key, kind, x, r, µs) and ``lag_us``,
    all-to-alls from ``a2a_rows``, compute factors from ``compute_rows`` (shape key, kind,
    FLOPs, µs; the factors go to ``meta.insitu_compute``)."""
    samples = dict(prof.meta.get("samples") or {}, host=[list(r) for r in rows], host_lag_us=lag_us,
                   host_x_unit=x_unit)
    meta = dict(prof.meta)
    if compute_rows:
        samples["insitu_compute"] = [list(r) for r in compute_rows]
        factors = compute_factors(prof, compute_rows)
        prof = apply_factors(prof, factors, min_shapes=MIN_SHAPES, per_dtype=True)
        meta["insitu_compute"] = factors
        meta[MIN_SHAPES_KEY] = MIN_SHAPES
        meta[PER_DTYPE_KEY] = True
    shapes = {s: dict(by) for s, by in prof.shapes.items()}
    if a2a_rows:
        samples["a2a"] = [list(r) for r in a2a_rows]
        for (shape, scope), cost in a2a_costs(a2a_rows).items():
            shapes.setdefault(shape, {})[f"all_to_all@{scope}"] = cost
    return replace(prof, host=fit_host([tuple(r) for r in rows], lag_us, x_unit),  # type: ignore[misc]
                   meta=dict(meta, samples=samples), shapes=shapes)


def calibrated_in_situ(prof: Profile, kind: str, shape: str) -> bool:
    """Whether ``prof`` prices ``kind`` on ``shape`` with an in-situ factor
    (:func:`apply_factors`): the shape's own where it has its own cost of the kind, else
    the median over shapes of the per-kind fallback that prices it, where enough shapes
    have one: for the operator composition of a per-dtype profile, shapes that run in the
    same tables' dtype; for the FLOPs line or a profile calibrated before, all shapes."""
    factors = prof.meta.get("insitu_compute") or {}
    if kind in prof.shapes.get(shape, {}):
        return kind in factors.get(shape, {})
    dtype = table_dtype(prof, shape) if per_dtype_of(prof) else None
    pool = [by for s, by in factors.items() if dtype is None or table_dtype(prof, s) == dtype]
    return sum(kind in by for by in pool) >= min_shapes_of(prof)


def saved_copy_us(prof: Profile, model: "MoEModel", forward_chunks: int) -> float:
    """µs a layer's first expert_dx task spends copying the expert activations its
    ``forward_chunks`` forward chunks saved (:meth:`moesched.optables.OpTables.saved_concat_us`,
    the layer's whole work on a rank). The calibration steps of pipeline degree 1 run the
    forward in one chunk, so an in-situ expert_dx factor (:func:`calibrated_in_situ`) already
    carries the one-chunk copy: charged then only for two or more chunks. 0 without
    operator tables (no memory table to price it)."""
    if prof.ops is None or (forward_chunks < 2 and calibrated_in_situ(prof, "expert_dx", model.shape_key())):
        return 0.0
    return prof.ops.saved_concat_us(model, work.expert_fwd_flops(model, model.tokens))
