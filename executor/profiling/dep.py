"""The forward-only DEP inference tasks, timed for the profile's ``dep`` section
(``moesched profile --inference``; :mod:`moesched.depcurves`).

Each task is one of :mod:`executor.dep`'s own task functions on one device, in the model's
dtype on a GPU (fp32 on a CPU), on one MoE layer's weights (:class:`executor.layers.LayerParams`
of E/eg local experts), called exactly as ``benchmarks/gpu_findep.py`` calls them
(:func:`task_fns`) and timed with the same timer (:func:`executor.profiling.timing.gpu_time_us`:
the device time alone, as every compute kind of the profile,
``REPS`` runs after ``WARMUP``, no grad):

* ``dep_attn``: :func:`executor.dep.attention_task` on m_a samples of S tokens (x = m_a S tokens);
* ``dep_shared``: :func:`executor.dep.shared_task` on the same tokens (models with shared experts);
* ``dep_expert@El{E/eg}``: :func:`executor.dep.expert_task` of one expert GPU on the
  m_a top_k S copies it receives when ag = eg and r2 = 1 (x = copies), spread evenly over
  its E/eg local experts (:func:`expert_input`), for every eg of ``EG`` that divides E.

m_a runs over ``M_A`` (``QUICK_M_A`` with ``--quick``). Ranks split the (model, eg) units
and share the rows.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch

from moesched.depcurves import dep_key
from moesched.models import MoEModel

from executor.dep import attention_task, expert_task, shared_task
from executor.layers import LayerParams
from executor.profiling.context import Ctx
from executor.profiling.timing import gpu_time_us

#: Micro-batch sizes m_a (samples of S tokens) of every DEP curve.
M_A = (1, 2, 4, 8)
QUICK_M_A = (1, 2)
#: Expert GPU counts eg whose E/eg local experts get a ``dep_expert`` curve (where eg divides E).
EG = (1, 2, 4, 8)
#: Timed runs and warm-ups per point on a GPU (those of ``benchmarks/gpu_findep.py``), on a CPU.
REPS, WARMUP = 10, 3
CPU_REPS, CPU_WARMUP = 3, 1
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

Row = tuple[str, str, float, float]  # (shape key, curve key, x = tokens or copies, µs)


def layer_model(m: MoEModel) -> MoEModel:
    """``m`` as one MoE layer (no dense layers): what the DEP tasks run on."""
    return replace(m, layers=1, dense_layers=(), dense_ffn_hidden=None)


def expert_input(m: MoEModel, eg: int, copies: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """What an expert rank receives: ``copies`` rows [row, gate weight, local expert id],
    the local ids cycling over the E/eg experts (even routing, as the profile's FLOPs assume)."""
    g = torch.Generator(device=device).manual_seed(1)
    per = m.experts // eg
    u = torch.randn(copies, m.d_model, generator=g, device=device, dtype=dtype)
    w = torch.rand(copies, 1, generator=g, device=device, dtype=dtype)
    lid = (torch.arange(copies, device=device) % per).to(dtype)[:, None]
    return torch.cat([u, w, lid], 1)


def task_fns(m: MoEModel, p: LayerParams, m_a: int, got: torch.Tensor | None, device: torch.device,
             dtype: torch.dtype, attention: bool = True) -> dict[str, tuple[Callable[[], Any], int]]:
    """task -> (closure, x) of the DEP tasks on m_a samples: ``attn`` and ``shared`` (with
    shared experts) when ``attention``, x = m_a S tokens; ``expert`` on the received copies
    ``got`` (:func:`expert_input`) unless None, x = copies."""
    out: dict[str, tuple[Callable[[], Any], int]] = {}
    tokens = m_a * m.seq_len
    if attention:
        x = torch.randn(m_a, m.seq_len, m.d_model, device=device, dtype=dtype)
        out["attn"] = (lambda: attention_task(m, p, x), tokens)
        if m.shared_experts:
            uf = torch.randn(tokens, m.d_model, device=device, dtype=dtype)
            out["shared"] = (lambda: shared_task(m, p, uf), tokens)
    if got is not None:
        out["expert"] = (lambda: expert_task(m, p, got), int(got.shape[0]))
    return out


def units(models: list[MoEModel]) -> list[tuple[MoEModel, int]]:
    """The (one-layer model, eg) units to time: every eg of ``EG`` dividing E (eg = 1 also
    times attention and shared experts)."""
    return [(layer_model(m), eg) for m in models for eg in EG if eg <= m.experts and m.experts % eg == 0]


def n_points(models: list[MoEModel], quick: bool) -> int:
    """How many points :func:`measure_dep` times over all ranks (for the progress bar)."""
    per_ma = sum(1 + (eg == 1) * (1 + (m.shared_experts > 0)) for m, eg in units(models))
    return per_ma * len(QUICK_M_A if quick else M_A)


def _time_unit(m: MoEModel, eg: int, grid: tuple[int, ...], device: torch.device, reps: int, warmup: int,
               tick: Callable[[], Any]) -> list[Row]:
    """Rows of one (model, eg) unit: its expert curve, and at eg = 1 attention and shared."""
    dtype = DTYPES[m.dtype] if device.type == "cuda" else torch.float32
    p = LayerParams(m, 0, eg, 0, 0, device, dtype)
    kind = {"attn": "dep_attn", "shared": "dep_shared", "expert": "dep_expert"}
    rows: list[Row] = []
    for m_a in grid:
        got = expert_input(m, eg, m_a * m.top_k * m.seq_len, device, dtype)
        for task, (fn, x) in task_fns(m, p, m_a, got, device, dtype, attention=eg == 1).items():
            with torch.no_grad():
                us = gpu_time_us(fn, device, reps, warmup)
            rows.append((m.shape_key(), dep_key(kind[task], m.experts // eg if task == "expert" else None),
                         float(x), us))
            tick()
        del got
    del p
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def measure_dep(ctx: Ctx, models: list[MoEModel], quick: bool, bar: Any) -> list[Row]:
    """(shape key, curve key, x, µs) rows of every DEP task of ``models`` (see the module
    docstring), gathered from every rank."""
    grid = QUICK_M_A if quick else M_A
    reps, warmup = (REPS, WARMUP) if ctx.cuda else (CPU_REPS, CPU_WARMUP)
    rows: list[Row] = []
    for m, eg in units(models)[ctx.rank::ctx.world]:
        rows += _time_unit(m, eg, grid, ctx.device, reps, warmup, lambda: bar.update(1))
    return [r for part in ctx.gather(rows) for r in part]
