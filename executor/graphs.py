"""CUDA graphs of the attention block, so that its forward and backward cost one launch each.

The executor is host-bound at the validation shapes: the host takes as long to launch a
task as the GPU takes to run it, and the attention block (norms, QKV, SDPA, output
projection, router) is the worst. Each piece of the block that
a plan runs (layer l, tokens [a, b) of whole samples: one per attention task, or one per
backward chunk inside it when attention is chunked) gets two graphs of its own, because a
replay overwrites the graph's saved activations and a pipelined step runs several pieces
of a layer before any of their backwards:

* forward: x [b-a, M] copied into the piece's static input, then norms, attention and
  router, writing h, u, w, idx of tokens [a, b) into the layer state's buffers;
* backward: dL/dh = the layer state's dy, dL/du = the piece's static du (copied in),
  dL/dw = dy . combined (computed in the graph), then ``torch.autograd.grad`` through the
  captured forward, the dense parameter gradients added into ``p.grad`` (the step's flat
  gradient buffers) and dL/dx written into the previous layer's dy.

Everything a graph reads or writes outside itself (the layer states of
:mod:`executor.state`, the flat gradient buffers) lives as long as the ``PlannedStep``, so
the addresses the graphs captured stay valid. The kernels are the ones eager mode runs
(autograd's own backward of the same forward), so results match eager mode; the fp32
self-check plans match the reference on the GPU. ``torch.cuda.make_graphed_callables``
would cost 0.5 ms of host time per backward (autograd engine,
gradient accumulation outside the graph) and 0.2 ms per forward.

On by default on CUDA; ``MOESCHED_CUDA_GRAPHS=0`` turns them off. The capture collects
garbage first and keeps the collector off while it runs (a collection inside a capture can
free an earlier step's pinned host buffers, whose event query is illegal then), captures
in "thread_local" mode (NCCL's watchdog thread polls its events all the time), and a failed
capture falls back to eager mode with one warning.
"""
from __future__ import annotations

import gc
import os
import warnings
from typing import Callable, TypeVar

import torch

from moesched.knobs import Knobs
from moesched.models import MoEModel

from executor.layers import LayerParams, MoEModule, attention_router
from executor.state import LayerState
from moesched.work import chunk_range

Key = tuple[int, int, int]  # (layer, first token, end token)
WARMUP = 2                  # eager forward + backward runs before the capture


def piece_cuts(T: int, rb: int, at_chunked: bool, a: int, b: int) -> list[int]:
    """Cut points of the attention task over tokens [a, b): whole [a, b) unless attention is
    chunked, then also every backward-chunk boundary (multiples of T/rb) inside it."""
    if not at_chunked:
        return [a, b]
    step = T // rb
    return sorted({a, b} | {q for q in range(0, T, step) if a < q < b})


def pieces(m: MoEModel, knobs: Knobs) -> list[Key]:
    """Every attention piece (layer, a, b) one step of a plan with these knobs runs."""
    out = []
    T = m.tokens
    for l in range(m.layers):
        n = knobs.r_fwd[l] if knobs.at_chunked else 1
        for c in range(n):
            cuts = piece_cuts(T, knobs.r_bwd[l], knobs.at_chunked, *chunk_range(T, n, c))
            out += [(l, pa, pb) for pa, pb in zip(cuts, cuts[1:])]
    return out


class GraphedPiece:
    """Forward and backward graphs of the attention block of one piece (module docstring).

    p: the layer's parameters; ls: its state; prev: the previous layer's state (None for
    layer 0: no input gradient). ``graph=False`` runs the same two functions eagerly, with
    the same interface (tests of the graphed path on CPUs)."""

    def __init__(self, p: LayerParams, m: MoEModel, ls: LayerState, prev: LayerState | None, a: int, b: int,
                 graph: bool = True):
        L, M = m.seq_len, m.d_model
        self.p, self.m, self.ls, self.prev, self.a, self.b = p, m, ls, prev, a, b
        self.params = p.attention_params()
        self.x = torch.zeros((b - a) // L, L, M, device=ls.h.device, dtype=ls.h.dtype, requires_grad=prev is not None)
        self.du = torch.zeros_like(self.x, requires_grad=False)
        self.fwd_graph = self.bwd_graph = None
        self._outs: tuple[torch.Tensor, ...] | None = None
        if not graph:
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy initialisation (cuBLAS, SDPA) outside the capture
            for _ in range(WARMUP):
                self._bwd(self._fwd())
        torch.cuda.current_stream().wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        self.fwd_graph, self.bwd_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.fwd_graph, pool=pool, capture_error_mode="thread_local"):
            outs = self._fwd()
        with torch.cuda.graph(self.bwd_graph, pool=pool, capture_error_mode="thread_local"):
            self._bwd(outs)
        self._captured = outs  # the captured outputs and their saved tensors: the replays' memory

    def _fwd(self) -> tuple[torch.Tensor, ...]:
        ls, a, b, M = self.ls, self.a, self.b, self.m.d_model
        with torch.enable_grad():
            h, u, w, idx = attention_router(self.x, self.p, self.m)
        with torch.no_grad():
            ls.h[a:b] = h.detach().reshape(-1, M)
            ls.u[a:b] = u.detach().reshape(-1, M)
            ls.w[a:b] = w.detach().reshape(-1, self.m.top_k)
            ls.idx[a:b] = idx.reshape(-1, self.m.top_k)
        return h, u, w

    def _bwd(self, outs: tuple[torch.Tensor, ...]) -> None:
        h, u, w = outs
        ls, a, b, prev = self.ls, self.a, self.b, self.prev
        dy = ls.dy[a:b]
        comb = ls.comb_full.view(ls.T, ls.k, ls.M)[a:b]
        dw = (dy[:, None, :].float() * comb.float()).sum(-1)
        wrt = ([self.x] if prev is not None else []) + self.params
        # retain_graph: the forward's saved tensors stay allocated through the capture, so the
        # backward graph does not reuse their memory and may replay twice after one forward
        # (the profiler's attn_bwd benchmark does; router indices were garbage otherwise)
        grads = torch.autograd.grad([h, u, w], wrt, [dy.view_as(h), self.du, dw.view_as(w)], retain_graph=True)
        with torch.no_grad():
            if prev is not None:
                prev.dy[a:b] = grads[0].reshape(-1, self.m.d_model)
                grads = grads[1:]
            for q, g in zip(self.params, grads):
                q.grad.add_(g)

    def forward(self, x: torch.Tensor) -> None:
        """Attention of x [b-a, M] (tokens [a, b)) into ls.h, ls.u, ls.w, ls.idx."""
        with torch.no_grad():
            self.x.view(-1, self.x.shape[-1]).copy_(x)
        if self.fwd_graph is None:
            self._outs = self._fwd()
        else:
            self.fwd_graph.replay()

    def backward(self, du: torch.Tensor) -> None:
        """Backward with dL/du [b-a, M]; dy and the combined rows are read from the state."""
        self.du.view(-1, self.du.shape[-1]).copy_(du)
        if self.bwd_graph is None:
            outs, self._outs = self._outs, None
            self._bwd(outs)
        else:
            self.bwd_graph.replay()


def enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("MOESCHED_CUDA_GRAPHS", "1") != "0"


T = TypeVar("T")


def capture_or_none(device: torch.device, what: str, build: Callable[[], T]) -> T | None:
    """``build()`` (CUDA graph captures) with the GPU idle and the garbage collector off
    (a collection during a capture may free pinned host memory of an earlier step, whose
    event query is illegal while this thread captures); None, with one warning, if a
    capture fails: eager mode gives the same results."""
    torch.cuda.synchronize(device)
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        return build()
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"CUDA graphs of {what} failed ({type(e).__name__}: {e}); running eagerly",
                      RuntimeWarning, stacklevel=3)
        return None
    finally:
        if was:
            gc.enable()
        torch.cuda.synchronize(device)


def capture(module: MoEModule, knobs: Knobs, layers: list[LayerState],
            m: MoEModel | None = None) -> dict[Key, GraphedPiece] | None:
    """Graphed attention blocks for every piece of a step over these layer states, or None
    (CPU, disabled, or the capture failed: eager mode then). Call before the step's
    collectives start; the states' buffers and the gradients are left dirty (the step
    resets and zeroes them)."""
    if not enabled(module.device):
        return None
    m = m or module.cfg
    return capture_or_none(module.device, "the attention block", lambda: {
        (l, a, b): GraphedPiece(module.blocks[l], m, layers[l], layers[l - 1] if l else None, a, b)
        for l, a, b in pieces(m, knobs)})
