"""The routing bookkeeping of a layer on the device, and CUDA graphs of it.

Forward (:func:`route_fwd`, at the end of attn_fwd): the kept copies of tokens [a, b)
(capacity counters carried across chunks), then for every dispatch chunk the order of its
copies (kept ones first, by global expert = (destination, local expert), then token and
slot), its counts [S, El, rb] of kept copies by (destination, local expert, backward
chunk), and its send rows u[token] in that order. Backward (:func:`rows_bwd`, once dy of a
backward chunk exists): the chunk's copies, kept ones first by (expert, token, slot), and
their combine_bwd send rows w * dy. Every shape here is fixed by the chunk's token range:
the host cuts the outputs to the kept copies once the counts are on the host, so none of
this waits for the host or depends on the routing's outcome.

That makes it a CUDA graph: on 1 x H200 these 25-30 small kernels cost 0.8-1.1 ms of host
time per attention task and 0.6 ms per backward chunk, the
largest host cost of a step after the attention block itself. :func:`capture` records one
graph per forward attention task (layer, chunk) and per backward chunk (layer, j) of a
plan, over the layer states' fixed buffers (``LayerState`` lives as long as its
``PlannedStep``); a replay re-runs the same kernels, so results are bit-identical to
eager mode. CPU, ``MOESCHED_CUDA_GRAPHS=0`` or a failed capture: eager.
"""
from __future__ import annotations

from typing import Callable

import torch

from moesched.knobs import Knobs
from moesched.models import MoEModel

from executor.graphs import capture_or_none, enabled
from executor.layers import capacity, keep_mask
from executor.routers import expert_choice_kept
from moesched.routers import expert_choice_capacity
from executor.state import LayerState
from moesched.work import chunk_range


def dispatch_order(ls: LayerState, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch chunk c: the order of its copies (kept first, by (destination, local expert),
    token, slot; dropped last) and counts [S, El, rb] of kept copies."""
    fa, fb = ls.frange(c)
    k, rb = ls.k, ls.rb
    kept = ls.kept[fa:fb].reshape(-1)
    e = ls.idx[fa:fb].reshape(-1)
    tok = torch.arange(e.numel(), device=e.device) // k + fa
    _, order = torch.sort(torch.where(kept, e, ls.E), stable=True)
    cnt = torch.zeros(ls.E * rb, dtype=torch.long, device=e.device)
    cnt.index_add_(0, e * rb + tok // (ls.T // rb), kept.long())
    return order, cnt.view(ls.S, ls.El, rb)


def route_fwd(ls: LayerState, m: MoEModel, a: int, b: int, chunks: list[int]) -> torch.Tensor:
    """Kept copies of tokens [a, b), then ls.fci[c] (flat copy index per row) and ls.fsend[c]
    (send rows) for every copy of each dispatch chunk c in ``chunks``, kept ones first.
    Returns the counts [len(chunks), S, El, rb] to exchange."""
    if m.router == "expert_choice":  # every expert chooses among all the rank's tokens: a = 0, b = T
        ls.kept[a:b] = expert_choice_kept(ls.w[a:b], expert_choice_capacity(m, ls.T))
    else:
        ls.kept[a:b] = keep_mask(ls.idx[a:b], m.experts, capacity(m, ls.T), ls.counters)
    cnts = []
    for c in chunks:
        order, cnt = dispatch_order(ls, c)
        ci = order + ls.frange(c)[0] * ls.k
        ls.fci[c] = ci
        ls.fsend[c] = ls.u[ci // ls.k]
        cnts.append(cnt)
    return torch.stack(cnts)


def rows_bwd(ls: LayerState, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward chunk j: flat copy index ci [n*k] of its copies, kept ones first by (expert,
    token, slot), dropped last; and their send rows w * dy [n*k, M]."""
    ja, jb = ls.brange(j)
    e = ls.idx[ja:jb].reshape(-1)
    kept = ls.kept[ja:jb].reshape(-1)
    _, order = torch.sort(torch.where(kept, e, ls.E), stable=True)
    ci = order + ja * ls.k
    return ci, (ls.w.view(-1)[ci, None] * ls.dy[ci // ls.k]).to(ls.dy.dtype)


def fwd_keys(m: MoEModel, knobs: Knobs) -> list[tuple[int, int, int]]:
    """(layer, chunk, nchunks) of every attention task of a step."""
    return [(l, c, n) for l in range(m.layers) for n in [knobs.r_fwd[l] if knobs.at_chunked else 1]
            for c in range(n)]


class RouteGraphs:
    """Replays of :func:`route_fwd` and :func:`rows_bwd` (module docstring)."""

    def __init__(self) -> None:
        self.fwd: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, tuple]] = {}
        self.bwd: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, tuple]] = {}

    def route_fwd(self, ls: LayerState, key: tuple[int, int, int], chunks: list[int]) -> torch.Tensor:
        g, (cnt, fci, fsend) = self.fwd[key]
        g.replay()
        for c, ci, rows in zip(chunks, fci, fsend):
            ls.fci[c], ls.fsend[c] = ci, rows
        return cnt

    def rows_bwd(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        g, out = self.bwd[key]
        g.replay()
        return out


def _graph(fn: Callable[[], tuple]) -> tuple[torch.cuda.CUDAGraph, tuple]:
    """Run fn once on a side stream (lazy initialisation outside the capture), then capture it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, capture_error_mode="thread_local"):  # NCCL's watchdog keeps polling
        out = fn()
    return g, out


def capture(layers: list[LayerState], m: MoEModel, knobs: Knobs) -> RouteGraphs | None:
    """Graphs of every attention task's and backward chunk's routing bookkeeping, or None
    (CPU, disabled, or a failed capture: eager mode). The states' per-step fields are left
    dirty: reset them before the first step."""
    dev = layers[0].h.device
    if not enabled(dev):
        return None

    def build() -> RouteGraphs:
        rg = RouteGraphs()
        for l, c, n in fwd_keys(m, knobs):
            ls = layers[l]
            a, b = chunk_range(ls.T, n, c)
            chunks = [c] if knobs.at_chunked else list(range(ls.rf))

            def fwd(ls: LayerState = ls, a: int = a, b: int = b, chunks: list[int] = chunks) -> tuple:
                cnt = route_fwd(ls, m, a, b, chunks)
                return cnt, [ls.fci[cc] for cc in chunks], [ls.fsend[cc] for cc in chunks]
            rg.fwd[(l, c, n)] = _graph(fwd)
        for l, ls in enumerate(layers):
            for j in range(ls.rb):
                rg.bwd[(l, j)] = _graph(lambda ls=ls, j=j: rows_bwd(ls, j))
        return rg
    return capture_or_none(dev, "the routing bookkeeping", build)
