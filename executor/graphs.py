"""CUDA graphs of the attention block, so that its forward and backward cost one launch.

The executor is host-bound at the validation shapes: on 4 x H200 the host takes as long to
launch a task as the GPU takes to run it, and the attention block (norms, QKV, SDPA, output
projection, router) is the worst, 1.5-5 ms of host time per call for 1 ms of GPU work
(``results/gpu/session3/``, host issue intervals of the measured traces). Each piece of the
block that a plan runs (layer l, tokens [a, b) of whole samples: one per attention task, or
one per backward chunk inside it when attention is chunked) gets its own graphed callable
(``torch.cuda.make_graphed_callables``): forward and backward replay captured kernels, the
same kernels eager mode runs, so results are unchanged. Each piece needs its own graphs
because a replay overwrites the graph's static outputs and saved activations, and a
pipelined step runs several pieces of a layer before any of their backwards.

On by default on CUDA; ``MOESCHED_CUDA_GRAPHS=0`` turns them off. Measured on 4 x H200 over
NVLink (``results/gpu/session3/graphs2/``) graphs made GPT2-XL-shaped steps 1.2-1.7x faster
and DeepSeek-shaped ones 1.16-1.26x, and every NCCL exactness plan still matched the
reference. Session 3 saw a capture fail through host memory ("operation not permitted when
stream is capturing", not reproduced since); the capture now collects garbage first and
keeps the garbage collector off while it runs, since a collection inside a capture can free
an earlier step's pinned host buffers, whose event query the capturing thread may not make.
A failed capture falls back to eager mode with one warning; the sample inputs come from a
CPU generator, so a failure does not leave the default CUDA generator in capture state for
the executor's own calls.
"""
from __future__ import annotations

import contextlib
import gc
import os
import warnings
from typing import Callable, Iterator

import torch
import torch.nn as nn

from moesched.knobs import Knobs
from moesched.models import MoEModel

from executor.layers import LayerParams, MoEModule, attention_router

Piece = tuple[int, int, int]  # (layer, first token, end token)


def piece_cuts(T: int, rb: int, at_chunked: bool, a: int, b: int) -> list[int]:
    """Cut points of the attention task over tokens [a, b): whole [a, b) unless attention is
    chunked, then also every backward-chunk boundary (multiples of T/rb) inside it."""
    if not at_chunked:
        return [a, b]
    step = T // rb
    return sorted({a, b} | {q for q in range(0, T, step) if a < q < b})


def pieces(m: MoEModel, knobs: Knobs) -> list[Piece]:
    """Every attention piece (layer, a, b) one step of a plan with these knobs runs."""
    out = []
    T = m.tokens
    for l in range(m.layers):
        n = knobs.r_fwd[l] if knobs.at_chunked else 1
        for c in range(n):
            cuts = piece_cuts(T, knobs.r_bwd[l], knobs.at_chunked, c * T // n, (c + 1) * T // n)
            out += [(l, pa, pb) for pa, pb in zip(cuts, cuts[1:])]
    return out


class _Block(nn.Module):
    """The differentiable attention block of one layer as a module (its dense parameters)."""

    def __init__(self, p: LayerParams, m: MoEModel):
        super().__init__()
        self.norm1, self.wqkv, self.wo, self.norm2, self.wg = p.norm1, p.wqkv, p.wo, p.norm2, p.wg
        self.m = m

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return attention_router(x, self, self.m)  # type: ignore[arg-type]


@contextlib.contextmanager
def _thread_local_capture() -> Iterator[None]:
    """``make_graphed_callables`` captures in CUDA's "global" mode, in which a CUDA call of
    any other thread invalidates the capture; NCCL's watchdog thread polls its events all
    the time. Capture in "thread_local" mode instead, as ``torch.cuda.graph`` allows."""
    orig = torch.cuda.graph

    class graph(orig):  # type: ignore[misc, valid-type]
        def __init__(self, cuda_graph: torch.cuda.CUDAGraph, *args: object, **kw: object) -> None:
            kw.setdefault("capture_error_mode", "thread_local")
            super().__init__(cuda_graph, *args, **kw)

    torch.cuda.graph = graph  # type: ignore[misc]
    try:
        yield
    finally:
        torch.cuda.graph = orig  # type: ignore[misc]


def enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("MOESCHED_CUDA_GRAPHS", "1") != "0"


def capture(module: MoEModule, knobs: Knobs, m: MoEModel | None = None) -> dict[Piece, Callable] | None:
    """Graphed attention blocks for every piece of a step, or None (CPU, disabled, or the
    capture failed: eager mode then). Call before the step's collectives start."""
    if not enabled(module.device):
        return None
    m = m or module.cfg
    L, M = m.seq_len, m.d_model
    out: dict[Piece, Callable] = {}
    gen = torch.Generator().manual_seed(0)  # sample inputs: not from the CUDA generator (see below)
    torch.cuda.synchronize(module.device)
    gc.collect()    # a collection during a capture may free pinned host memory of an earlier step,
    was = gc.isenabled()  # whose event query is illegal while this thread captures
    gc.disable()
    try:
        with _thread_local_capture():
            for l, a, b in pieces(m, knobs):
                x = torch.randn(((b - a) // L, L, M), generator=gen).to(module.device, module.dtype)
                out[(l, a, b)] = torch.cuda.make_graphed_callables(_Block(module.blocks[l], m),
                                                                   (x.requires_grad_(l > 0),))
    except Exception as e:  # noqa: BLE001 - eager mode still gives the same results
        warnings.warn(f"CUDA graphs of the attention block failed ({type(e).__name__}: {e}); running eagerly",
                      RuntimeWarning, stacklevel=2)
        return None
    finally:
        if was:
            gc.enable()
        torch.cuda.synchronize(module.device)
    return out
