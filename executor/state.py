"""Per-step buffers of one layer and the row bookkeeping of the all-to-alls.

Vocabulary (per rank; T tokens, k slots, E experts, S = EP group size, El = E/S):

* copy (t, j): token t routed to its j-th expert; flat copy index ci = t*k + j.
* owner side: the rank that owns token t (runs attention, merge, loss for it).
* expert side: the rank holding the copy's expert.
* message order of a dispatch chunk c (and of its combine): copies sorted by (destination,
  expert, token, slot); the receiver sees them as (source, local expert, token, slot).
* the forward count exchange gives, for every forward chunk c, cnt[c] [S_src, S_dst, El, rb]:
  copies from src to (dst, local expert) whose token lies in backward chunk j. From it the
  expert side selects backward chunk j's rows without a second exchange, in the message
  order (source, expert, forward chunk, token, slot) that the owner also uses.
* GEMM order on the expert side: rows grouped by local expert (expert, source, ...).

Host bookkeeping runs in numpy: the counts arrive on the host, and the row indices derived
from them (a few thousand entries) cost a microsecond per numpy call against tens of
microseconds per CPU torch operator (measured on 1 x H200).
Device buffers of a layer live as long as the :class:`PlannedStep` that owns the state:
:meth:`LayerState.reset` readies them for the next step, so their addresses stay fixed
(what the routing graphs of :mod:`executor.routegraphs` read and write).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from moesched.knobs import Knobs
from moesched import routers
from moesched.models import MoEModel
from moesched.work import chunk_range


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate arange(s, s+n) for s, n in zip(starts, lengths), flattened (int64)."""
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    offs = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - offs, lengths)


def excl_cumsum(x: np.ndarray) -> np.ndarray:
    """Exclusive prefix sum over the flattened array, shaped like x."""
    x = np.asarray(x)
    f = x.reshape(-1)
    return (np.cumsum(f) - f).reshape(x.shape)


@dataclass
class Piece:
    """One autograd subgraph of attention + norms + router: tokens [a, b) (whole samples).

    Eager: x detached leaf [nb, L, M]; h, u [nb, L, M]; w [nb, L, k] fp32 router weights.
    Graphed: ``graphed`` (an :class:`executor.graphs.GraphedPiece`) holds them instead.
    """

    a: int
    b: int
    x: torch.Tensor | None = None
    h: torch.Tensor | None = None
    u: torch.Tensor | None = None
    w: torch.Tensor | None = None
    graphed: object | None = None
    router: object | None = None        # executor.routers.RouterOut, kept for auxiliary losses


@dataclass
class ExpertChunk:
    """Expert-side forward chunk: rows in GEMM order.

    x [n, M] inputs, h1/h3 [n, H] pre-activations, perm [n] message position of each GEMM
    row (host), ne[e] rows per local expert, cnt [S_src, El, rb] counts received (host)."""

    cnt: np.ndarray
    perm: np.ndarray | None = None
    ne: list[int] = field(default_factory=list)
    x: torch.Tensor | None = None
    h1: torch.Tensor | None = None
    h3: torch.Tensor | None = None


@dataclass
class ExpertBwd:
    """Expert-side backward chunk j: sel [n] rows of the saved (concatenated) GEMM-order
    tensors in GEMM order; perm [n] their message positions; ne rows per local expert;
    recv_split rows per source. Between expert_dx and expert_dw: dy [n, M], the selected
    pre-activations h1, h3 [n, H], their gradients g_h1, g_h3 [n, H] (GEMM order) and offs,
    the grouped GEMM's row ends (None: loop over experts)."""

    sel: np.ndarray | torch.Tensor   # host, then on the device from expert_dx on
    perm: np.ndarray | torch.Tensor
    ne: list[int]
    recv_split: list[int]
    dy: torch.Tensor | None = None
    g_h1: torch.Tensor | None = None
    g_h3: torch.Tensor | None = None
    h1: torch.Tensor | None = None
    h3: torch.Tensor | None = None
    offs: torch.Tensor | None = None


class LayerState:
    """Everything one layer keeps during a step on one rank (owner and expert side).

    Device buffers are allocated once; :meth:`reset` (called by the constructor and before
    every step) zeroes the ones a step accumulates into and drops the per-step rest."""

    def __init__(self, T: int, M: int, k: int, E: int, S: int, rf: int, rb: int, device: torch.device,
                 dtype: torch.dtype, shared_hidden: int, dense: bool = False):
        self.dense = dense  # a dense layer: attention + the FFN in the shared_* buffers, no routing
        self.T, self.M, self.k, self.E, self.S, self.El, self.rf, self.rb = T, M, k, E, S, E // S, rf, rb
        z = dict(device=device, dtype=dtype)
        self.lock = threading.Lock()                             # ready() may run on both issue threads
        self.exchange: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # count exchange buffers (tasks.py)
        # owner side, forward
        self.h = torch.empty(T, M, **z)
        self.u = torch.empty(T, M, **z)
        self.w = torch.zeros(T, k, device=device, dtype=torch.float32)
        self.idx = torch.zeros(T, k, device=device, dtype=torch.long)  # valid expert ids before any step
        self.kept = torch.zeros(T, k, device=device, dtype=torch.bool)
        self.counters = torch.zeros(E, device=device, dtype=torch.long)
        self.comb_full = torch.zeros(T * k, M, **z)              # combine result per copy (0: dropped)
        self.shared_out = torch.zeros(T, M, **z) if shared_hidden else None
        self.sh1 = torch.empty(T, shared_hidden, **z) if shared_hidden else None
        self.sh3 = torch.empty(T, shared_hidden, **z) if shared_hidden else None
        # backward
        self.dy = torch.zeros(T, M, **z)                         # dL/d(layer output)
        self.du_shared = torch.zeros(T, M, **z) if shared_hidden else None
        self.reset(zero=False)

    def reset(self, zero: bool = True) -> None:
        """Ready the state for a new step: per-step lists emptied, accumulators zeroed (on
        the current stream)."""
        rf, rb = self.rf, self.rb
        if zero:
            self.counters.zero_()
            self.comb_full.zero_()
            self.dy.zero_()
            for t in (self.shared_out, self.du_shared):
                if t is not None:
                    t.zero_()
        # owner side, forward
        self.pieces: list[Piece] = []
        self.fsend: list[torch.Tensor | None] = [None] * rf      # dispatch send rows
        self.fci: list[torch.Tensor | None] = [None] * rf        # flat copy index per row
        self.fsplit: list[list[int]] = [[] for _ in range(rf)]  # dispatch rows per destination
        self.cnt: list[np.ndarray | None] = [None] * rf          # [S, S, El, rb] all-gathered counts (host)
        self.pending: list[Callable[[], None] | None] = [None] * rf  # count exchanges not yet on the host
        self.comb: list[torch.Tensor | None] = [None] * rf       # combine results (message order)
        self.comb_pos: list[np.ndarray | None] = [None] * rf     # flat message position per received row
        self.scattered = [False] * rf
        # expert side, forward
        self.xin: list[torch.Tensor | None] = [None] * rf        # dispatch received rows (message order)
        self.ech: list[ExpertChunk | None] = [None] * rf
        self.eout: list[torch.Tensor | None] = [None] * rf       # expert output rows (message order)
        self.saved: tuple[torch.Tensor, ...] | None = None       # concatenated GEMM-order x, h1, h3
        # backward
        self.dy_ready = bytearray(self.T)
        self.bsend: list[torch.Tensor | None] = [None] * rb      # combine_bwd send rows (owner)
        self.bci: list[torch.Tensor | None] = [None] * rb
        self.bsplit: list[list[int]] = [[] for _ in range(rb)]
        self.ebwd: list[ExpertBwd | None] = [None] * rb
        self.edx: list[torch.Tensor | None] = [None] * rb        # expert dX rows (message order)
        self.dxr: list[torch.Tensor | None] = [None] * rb        # dispatch_bwd received rows (owner)
        self.dxr_pos: list[np.ndarray | None] = [None] * rb

    def frange(self, c: int) -> tuple[int, int]:
        return chunk_range(self.T, self.rf, c)

    def brange(self, j: int) -> tuple[int, int]:
        return chunk_range(self.T, self.rb, j)

    # ---- routing counts on the host -----------------------------------------------------
    def defer(self, chunks: list[int], resolve: Callable[[], None]) -> None:
        """Dispatch chunks whose counts are in flight; ``resolve`` fills cnt, fsplit, fsend
        and fci of all of them (it may block until the exchange is done)."""
        for c in chunks:
            self.pending[c] = resolve

    def ready(self, c: int) -> None:
        """Make chunk c's counts available on the host (waiting for them if needed)."""
        if self.pending[c] is None:
            return
        with self.lock:
            fn = self.pending[c]
            if fn is not None:
                fn()
                self.pending = [None if p is fn else p for p in self.pending]

    # ---- expert-side index bookkeeping (host, numpy) -----------------------------------
    def expert_chunk(self, c: int, me: int) -> ExpertChunk:
        """GEMM order of forward chunk c's received rows."""
        self.ready(c)
        cnt = self.cnt[c][:, me]                      # [S, El, rb]
        n = cnt.sum(-1)                               # [S, El]
        mo = excl_cumsum(n)
        perm = ranges(mo.T, n.T)
        return ExpertChunk(cnt=cnt, perm=perm, ne=n.sum(0).tolist())

    def expert_bwd(self, j: int) -> ExpertBwd:
        """Rows of backward chunk j on the expert side (needs every forward chunk done)."""
        starts, lens, base = [], [], 0
        for ch in self.ech:
            cnt = ch.cnt                              # [S, El, rb]
            n = cnt.sum(-1)
            go = excl_cumsum(n.T).T                   # GEMM-order offset of block (s, e)
            inb = (np.cumsum(cnt, -1) - cnt)[..., j]
            starts.append(base + go + inb)
            lens.append(cnt[..., j])
            base += int(n.sum())
        st = np.stack(starts)                         # [rf, S, El]
        ln = np.stack(lens)
        ln_msg = ln.transpose(1, 2, 0)                # message order (s, e, c)
        mpos = excl_cumsum(ln_msg)
        sel = ranges(st.transpose(2, 1, 0), ln.transpose(2, 1, 0))
        perm = ranges(mpos.transpose(1, 0, 2), ln_msg.transpose(1, 0, 2))
        return ExpertBwd(sel=sel, perm=perm, ne=ln.sum((0, 1)).tolist(), recv_split=ln.sum((0, 2)).tolist())

    def matrix_fwd(self, c: int) -> np.ndarray:
        """Rows src -> dst [S, S] of dispatch chunk c (same on every rank of the EP group)."""
        self.ready(c)
        return self.cnt[c].sum((2, 3))

    def matrix_bwd(self, j: int) -> np.ndarray:
        """Rows owner -> expert rank [S, S] of combine_bwd chunk j."""
        for c in range(self.rf):
            self.ready(c)
        return sum(cnt[..., j].sum(-1) for cnt in self.cnt)


def new_layer_states(m: MoEModel, knobs: Knobs, ep: int, device: torch.device,
                     dtype: torch.dtype) -> list[LayerState]:
    """Fresh per-step states of every layer of model m under the knobs' degrees."""
    sh = m.shared_experts * m.ffn_hidden
    return [LayerState(m.tokens, m.d_model, routers.slots(m), m.experts, ep, knobs.r_fwd[l], knobs.r_bwd[l], device,
                       dtype, m.dense_ffn_hidden if m.is_dense(l) else sh, m.is_dense(l)) for l in range(m.layers)]
