"""Operator tables of the profile (:mod:`moesched.optables`): GEMMs, grouped expert
GEMMs, scaled-dot-product attention and memory-bound kernels timed over grids, per dtype.

Each operator is timed as the executor's task functions launch it (:mod:`moesched.ops` lists
which; :mod:`executor.ffn` and :mod:`executor.layers` run them): ``x @ w.t()``-style GEMMs
(``torch.mm``), ``torch._grouped_mm`` with the transposed stacked weights of the forward and
with the transposed rows of the weight gradient, ``F.scaled_dot_product_attention`` and
its backward, and the elementwise / gather / scatter-add / RMSNorm / softmax / sort
kernels by bytes moved. GPU time alone (:func:`executor.profiling.timing.time_us`), median
of ``reps``. Grids (GPU about a minute on one H200; CPU ``--quick`` a few seconds):

* GEMM (m, n, k): every size in {16, 64, 256, 1024, 2048, 4096, 8192, 16384, 65536} up to
  2^42 FLOPs and 6 GB of operands; fp32: m, n in :data:`FP32_OUT` (half-octave steps) and k
  in :data:`FP32_K` up to 2^39 FLOPs (``--quick``: {16, 256, 1024, 4096, 16384});
* grouped (bf16): groups {1, 4, 16, 64, 256} x rows per group {16, 64, 256, 1024, 4096} x
  n, k in {256, 1024, 4096, 16384}, forward and weight-gradient forms, up to 2^31 weight
  elements; uneven groups (skew 0.5, 1) on a subset;
* attention: bh {4, 16, 64, 256, 1024} x seq {128 ... 4096} x head_dim {64, 128}, causal,
  forward and backward (non-causal at head_dim 128), up to bh*seq^2*head_dim = 2^40 (fp32 2^36);
* memory: 4 KiB ... 1 GiB (x4 steps) per class.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable

import torch
import torch.nn.functional as F

from executor.profiling.timing import time_us

KB = 2**10
DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _gemm_items(axes: tuple[int, ...], max_flops: float, out: tuple[int, ...] | None = None) -> list[tuple]:
    """GEMM points (m, n, k) over ``axes`` (m and n, the output's, over ``out`` where given)."""
    return [("gemm", (m, n, k)) for m, n, k in itertools.product(out or axes, out or axes, axes)
            if 2.0 * m * n * k <= max_flops and 2 * (m * k + k * n + m * n) <= 6e9]


#: fp32 GEMM output sizes (m: tokens or tokens per expert; n: a model or expert width) at
#: half-octave steps, the points between powers of two rounded to a multiple of 64. A plain
#: fp32 GEMM runs in a few waves of output tiles over the SMs, so its time steps with m and
#: n, and an octave grid misses a step by up to 1.3x (H200: 1,536 x 4,096 x 1,024 measured
#: 318 µs, interpolated between 1,024 and 4,096 rows 268 µs; 512 x 6,400 x 1,600 measured
#: 295 µs, interpolated between widths 4,096 and 8,192 224 µs; ``benchmarks/gpu_gemm_regimes.py``).
FP32_OUT = (16, 64, 128, 192, 256, 384, 512, 704, 1024, 1472, 2048, 2880, 4096, 5824, 8192, 11584, 16384)
#: fp32 GEMM reduction sizes (k) at octave steps from 256: the time is smooth in k.
FP32_K = (16, 256, 512, 1024, 2048, 4096, 8192, 16384)


def _grouped_items(quick: bool) -> list[tuple]:
    G, R, NK = ((1, 4, 16), (16, 128), (64, 256)) if quick else \
        ((1, 4, 16, 64, 256), (16, 64, 256, 1024, 4096), (256, 1024, 4096, 16384))
    items = [("grouped", (g, r, n, k, w, 0.0)) for g, r, n, k, w in itertools.product(G, R, NK, NK, (0, 1))
             if 2.0 * g * r * n * k <= 2.0**42 and g * n * k <= 2**31]
    sub = ((4, 16, 64, 256), ((64, 256),)) if quick else ((16, 64), (256, 1024), ((1024, 4096), (4096, 1024)))
    if not quick:
        items += [("grouped", (g, r, n, k, w, s)) for g, r, (n, k), w, s in
                  itertools.product(sub[0], sub[1], sub[2], (0, 1), (0.5, 1.0))]
    return items


def _attn_items(quick: bool, max_work: float = 2.0**40) -> list[tuple]:
    BH, S, D = ((2, 8), (16, 64), (16, 32)) if quick else ((4, 16, 64, 256, 1024), (128, 256, 512, 1024, 2048, 4096),
                                                           (64, 128))
    items = [("attention", (bh, s, d, c, b)) for bh, s, d, b in itertools.product(BH, S, D, (0, 1))
             for c in (1, 0) if (c == 1 or d == D[-1]) and bh * s * s * d <= max_work and bh * s * d <= 2**28]
    return items


def items_for(dtype: str, cuda: bool, quick: bool) -> list[tuple]:
    """(table, key) of every point to time in ``dtype``."""
    if not cuda:
        axes, sizes = (8, 32, 128, 512), tuple(4 * KB * 4**i for i in range(5 if quick else 6))
        items = _gemm_items(axes, 2.0**31) + _attn_items(True)
    else:
        sizes = tuple(4 * KB * 4**i for i in range(10))
        if dtype == "fp32":
            items = (_gemm_items((16, 256, 1024, 4096, 16384), 2.0**39) if quick else
                     _gemm_items(FP32_K, 2.0**39, FP32_OUT)) + _attn_items(quick, 2.0**36)
        else:
            items = _gemm_items((16, 64, 256, 1024, 2048, 4096, 8192, 16384, 65536), 2.0**42)
            items += _grouped_items(quick) + _attn_items(quick)
    from moesched.ops import MEM_CLASSES
    return items + [("mem", (c, b)) for c in MEM_CLASSES for b in sizes if not (c == "sort" and b > 256 * 2**20)]


def _skewed(g: int, r: int, skew: float) -> list[int]:
    return [max(0, round(r * (1 + skew * ((2 * i / (g - 1) - 1) if g > 1 else 0)))) for i in range(g)]


def closure(table: str, key: tuple, dtype: torch.dtype, dev: torch.device) -> Callable[[], Any]:
    """A closure running one operator of ``table`` at ``key`` once (fresh random inputs)."""
    rnd = lambda *s, dt=dtype: torch.randn(*s, device=dev, dtype=dt)  # noqa: E731
    if table == "gemm":
        m, n, k = key
        a, w = rnd(m, k), rnd(n, k)
        return lambda: a @ w.t()
    if table == "grouped":
        g, r, n, k, wgrad, skew = key
        rows = _skewed(g, r, skew)
        offs = torch.tensor(list(itertools.accumulate(rows)), dtype=torch.int32, device=dev)
        tot = sum(rows)
        if wgrad:   # gw[g, k, n] = dy.t()[k, rows_g] @ a[rows_g, n]
            dy, act = rnd(tot, k), rnd(tot, n)
            return lambda: torch._grouped_mm(dy.t(), act, offs=offs)
        x, w = rnd(tot, k), rnd(g, n, k)    # y = x @ w[g].t(), the forward's transposed weights
        return lambda: torch._grouped_mm(x, w.transpose(1, 2), offs=offs)
    if table == "attention":
        bh, s, d, causal, backward = key
        q, kk, v = (rnd(1, bh, s, d).requires_grad_(bool(backward)) for _ in range(3))
        if not backward:
            return lambda: F.scaled_dot_product_attention(q, kk, v, is_causal=bool(causal))
        out = F.scaled_dot_product_attention(q, kk, v, is_causal=bool(causal))
        go = torch.randn_like(out)
        return lambda: torch.autograd.grad(out, (q, kk, v), go, retain_graph=True)
    cls, nbytes = key
    el = torch.tensor([], dtype=dtype).element_size()
    W = 1024
    if cls == "elementwise":
        a, b = rnd(max(1, nbytes // (3 * el))), rnd(max(1, nbytes // (3 * el)))
        c = torch.empty_like(a)
        return lambda: torch.add(a, b, out=c)
    R = max(1, nbytes // (2 * W * el))
    if cls in ("gather", "scatter_add", "norm"):
        x = rnd(R, W)
        idx = torch.randperm(R, device=dev)
        if cls == "gather":
            return lambda: x.index_select(0, idx)
        if cls == "norm":
            wn = rnd(W)
            return lambda: F.rms_norm(x, (W,), wn, 1e-6)
        out = torch.zeros(max(1, (R * 2) // 3), W, device=dev, dtype=dtype)
        idx = idx % out.shape[0]
        src = rnd(R * 2 // 3 or 1, W)
        idx = idx[: src.shape[0]]
        return lambda: out.index_add_(0, idx, src)
    if cls == "softmax":
        x = torch.randn(max(1, nbytes // (2 * 64 * 4)), 64, device=dev)
        return lambda: torch.softmax(x, -1)
    keys = torch.randint(0, 64, (max(1, nbytes // 16),), device=dev)
    return lambda: torch.sort(keys, stable=True)


def work_of(table: str, key: tuple, el: int) -> Any:
    """The row's size columns as the tables store them (memory: bytes as actually moved)."""
    if table != "mem":
        return list(key)
    cls, nbytes = key
    W = 1024
    if cls == "elementwise":
        return [3 * el * max(1, nbytes // (3 * el))]
    if cls in ("gather", "norm"):
        return [2 * W * el * max(1, nbytes // (2 * W * el))]
    if cls == "scatter_add":
        R = max(1, nbytes // (2 * W * el))
        return [3 * W * el * (R * 2 // 3 or 1)]
    if cls == "softmax":
        return [2 * 64 * 4 * max(1, nbytes // (2 * 64 * 4))]
    return [16 * max(1, nbytes // 16)]


def measure_ops(ctx: Any, dtypes: list[str], quick: bool, reps: int = 5, warmup: int = 2) -> dict[str, Any]:
    """The ``ops.tables`` section (rows per table and dtype), ranks sharing the points."""
    mine = []
    for dt in dtypes:
        tdt = DT[dt]
        el = torch.tensor([], dtype=tdt).element_size()
        items = items_for(dt, ctx.cuda, quick)
        for table, key in items[ctx.rank::ctx.world]:
            if table == "grouped" and not hasattr(torch, "_grouped_mm"):
                continue
            try:
                fn = closure(table, key, tdt, ctx.device)
                us = time_us(ctx, fn, reps, warmup)
            except (RuntimeError, NotImplementedError, ValueError, TypeError):  # an operator or size this device lacks
                continue
            finally:
                fn = None
            mine.append((dt, table, key, work_of(table, key, el), us))
        if ctx.cuda:
            torch.cuda.empty_cache()
    out: dict[str, Any] = {}
    for dt, table, key, cols, us in [r for part in ctx.gather(mine) for r in part]:
        t = out.setdefault(dt, {})
        if table == "mem":
            t.setdefault("mem", {}).setdefault(key[0], []).append(cols + [round(us, 4)])
        else:
            t.setdefault(table, []).append([float(c) for c in cols] + [round(us, 4)])
    return out
