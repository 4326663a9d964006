"""The operator composition's per-kind corrections, fitted on a profile's timed tasks.

A task composed from its operators (:func:`moesched.ops.task_ops`, priced from the
operator tables) leaves out what no table holds: launch gaps between kernels, small
kernels, caches. The profiler times whole tasks too (``meta.samples["compute"]``: rows
(model name, kind, tokens, FLOPs, µs, role)), and each kind's correction (alpha_us, scale)
maps the composed µs onto the timed µs (:func:`moesched.costs.fit.fit_dtype_corrections`:
one for the dtype most tasks ran in, one per other dtype). The corrections hold for the
recipe version they were fitted against, which the profile records (``ops.recipe``);
:func:`moesched.costs.build.refit` fits them again against the current recipe from the
samples the profile keeps, without measuring.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from moesched.costs.fit import fit_dtype_corrections
from moesched.errors import MoeschedError
from moesched.models import MoEModel
from moesched.ops import RECIPE, Op, bench_shape, task_ops
from moesched.optables import OpTables


@dataclass(frozen=True)
class CompositionRow:
    """One timed task beside its composition: µs composed from the tables and measured."""

    kind: str
    dtype: str
    composed_us: float
    measured_us: float
    role: str  # "fit" (fits the correction), "replay" (checks it); "tiny" rows are left out
    ops: tuple[Op, ...]


def composition_rows(ops: OpTables, models: dict[str, MoEModel], compute: Sequence[Sequence], world: int
                     ) -> list[CompositionRow]:
    """The rows of ``compute`` (model name, kind, tokens, FLOPs, µs, role) whose model runs in
    a dtype of ``ops``, each task composed as the profiler timed it (:func:`bench_shape`;
    expert parallel over the ``world`` ranks where it divides the experts, else 1; grouped
    bf16 expert GEMMs on GPUs, fp32 throughout on CPUs: ``ops.runs_as``)."""
    cuda = ops.runs_as is None
    rows = []
    for name, kind, tokens, _, us, role in compute:
        if str(name) not in models:
            raise MoeschedError(f"profile: it timed tasks of model {name!r}, which is not among the models "
                                f"given ({', '.join(sorted(models)) or 'none'}); --models must name those it was measured on")
        m = bench_shape(models[str(name)], str(kind), int(tokens))
        dt = ops.run_dtype(m.dtype)
        if dt is None or role == "tiny":
            continue
        ep = world if m.experts % world == 0 else 1
        ol = task_ops(str(kind), m, int(tokens), ep, grouped=dt == "bf16" and cuda,
                      bytes_per_elem=None if cuda else 4, recipe=ops.recipe)
        rows.append(CompositionRow(str(kind), dt, ops.ops_us(dt, ol), float(us), str(role), tuple(ol)))
    return rows


def fit_corrections(ops: OpTables, models: dict[str, MoEModel], compute: Sequence[Sequence], world: int
                    ) -> tuple[OpTables, list[CompositionRow]]:
    """``ops`` at the current recipe (:data:`moesched.ops.RECIPE`) with its corrections
    fitted on the "fit" rows of ``compute``, and every row composed so."""
    ops = replace(ops, recipe=RECIPE)
    rows = composition_rows(ops, models, compute, world)
    corr, by_dtype = fit_dtype_corrections((r.dtype, r.kind, r.composed_us, r.measured_us)
                                           for r in rows if r.role == "fit")
    return replace(ops, correction=corr, dtype_correction=by_dtype), rows


def fit_summary(ops: OpTables, rows: Sequence[CompositionRow]) -> dict[str, dict[str, dict[str, float]]]:
    """The composition's |error| % on every row, mean and max, keyed KIND.ROLE
    (KIND.ROLE.DTYPE for a dtype with its own correction): raw (no correction), corrected,
    and for a dtype of its own also under the common correction ("common")."""
    common = replace(ops, dtype_correction={})
    errs: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        own = r.dtype in ops.dtype_correction
        e = errs.setdefault(f"{r.kind}.{r.role}" + (f".{r.dtype}" if own else ""), {"raw": [], "corrected": [], "common": []})
        e["raw"].append(abs(r.composed_us - r.measured_us) / r.measured_us * 100)
        e["corrected"].append(abs(ops.task_us(r.kind, r.dtype, r.ops) - r.measured_us) / r.measured_us * 100)
        if own:
            e["common"].append(abs(common.task_us(r.kind, r.dtype, r.ops) - r.measured_us) / r.measured_us * 100)
    return {k: {v: {"mean_pct": round(sum(x) / len(x), 2), "max_pct": round(max(x), 2)} for v, x in e.items() if x}
            for k, e in sorted(errs.items()) if e["raw"]}
