"""The operators each compute task kind runs: one recipe shared by the profiler, the cost
model and the executor's tests (torch-free).

:func:`task_ops` lists, for a task of a kind on a model shape, the operators its function in
:mod:`executor.tasks` (with :mod:`executor.ffn`) launches, with their shapes: GEMMs,
grouped expert GEMMs, scaled-dot-product attention, and memory-bound kernels by the bytes
they move. The profile prices each operator from its measured tables
(:mod:`moesched.optables`) and a task costs the sum. ``tests/test_ops.py`` records the
matrix products the executor's task functions really run (CPU, fp32) and checks that they
equal this recipe's GEMMs, so the recipe, the executor and the profiler cannot drift apart.

Shapes, per task (T tokens of whole samples, b = T / L samples; C routed copies received;
El = E / ep local experts; M model width, H expert hidden, S shared experts, h heads,
d head size (M / h unless the model sets head_dim), h_kv key/value heads, k top-k; B bytes per element of the run's dtype):

* attn_fwd: merge of the previous layer (gather C*M, weighted sum in fp32), rmsnorm, GEMM
  (T, (h + 2 h_kv) d, M) (h_kv key/value heads of grouped-query attention, d = M / h by
  default), with qk_norm a norm over the q and k heads, with h_kv < h the repeat of k and
  v to every query head, causal attention (b*h, L, d), GEMM (T, M, h d), residual, rmsnorm, router GEMM
  (T, E, M) (xmoe: (T, d_r, M) and (T, E, d_r)), fp32 softmax and top-k, capacity ranks
  (sort of T*k keys), dispatch rows (gather C*M).
* attn_bwd: the input and weight gradients of each forward GEMM -- for y[m, n] = x[m, k]
  w[n, k]^T, dX = GEMM (m, k, n) and dW = GEMM (n, k, m) -- attention backward, norms
  backward, the scatter-add of the returned expert input gradients (C*M) and the combine
  weights' gradient, and the combine_bwd send rows (gather C*M, weighted in fp32).
* expert_fwd / expert_dx / expert_dw: grouped GEMMs over El groups of C / El rows in bf16
  (``torch._grouped_mm``); a loop of El GEMMs in other dtypes (:func:`executor.ffn.grouped`).
  Forward: (rows, H, M) [x2 SwiGLU] then (rows, M, H); input gradient: (rows, H, M) then
  (rows, M, H) [x2 SwiGLU]; weight gradient: per expert [M, rows] @ [rows, H] and
  [H, rows] @ [rows, M] [x2 SwiGLU], accumulated into the stacked gradients (grouped: an
  add; a loop: inside the GEMM, ``addmm_``).
* shared_fwd / shared_bwd: the same FFN on T tokens with hidden S*H, plain GEMMs; shared_bwd
  copies its input gradient into the layer's buffer.
* loss: the merge of the last layer, the squared error and its gradient (elementwise, fp32),
  and the last layer's combine_bwd send rows.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

from moesched import work
from moesched.kinds import ALL_COMPUTE_KINDS
from moesched.models import MoEModel

#: Memory-bound operator classes, each priced from its own bytes-moved table.
MEM_CLASSES = ("elementwise", "gather", "scatter_add", "norm", "softmax", "sort")
#: Version of this recipe. A profile's operator corrections are fitted against one version
#: and record it (``ops.recipe``); pricing with that profile uses the same version. Version 1
#: left out the fp32 weighted copies of the merge and the loss task's combine_bwd send rows;
#: version 2 counted an add after every GEMM of a per-expert (or shared-expert) loop that
#: accumulates, which ``addmm_`` does inside the GEMM, and left out shared_bwd's copy of its
#: input gradient.
RECIPE = 3


@dataclass(frozen=True)
class Gemm:
    """out[m, n] = a[m, k] @ b[k, n]; 2*m*n*k FLOPs."""

    m: int
    n: int
    k: int

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k


@dataclass(frozen=True)
class GroupedGemm:
    """One ``torch._grouped_mm`` over ``groups`` groups of ``rows`` rows each (mean; the
    spread of an uneven split is ``skew``: group g has rows * (1 + skew * (2g/(G-1) - 1))).
    Forward form (``wgrad`` False): per group [rows, k] @ [k, n]. Weight-gradient form:
    per group [k, rows] @ [rows, n] -> [k, n] (the rows are the reduction). 2*G*rows*n*k FLOPs."""

    groups: int
    rows: float
    n: int
    k: int
    wgrad: bool = False
    skew: float = 0.0

    @property
    def flops(self) -> float:
        return 2.0 * self.groups * self.rows * self.n * self.k


@dataclass(frozen=True)
class Attention:
    """``F.scaled_dot_product_attention`` on [bh, seq, head_dim] query/key/value (self-attention),
    forward or backward."""

    bh: int
    seq: int
    head_dim: int
    causal: bool = True
    backward: bool = False


@dataclass(frozen=True)
class MemOp:
    """A memory-bound kernel of class ``op`` (:data:`MEM_CLASSES`) moving ``nbytes`` bytes
    (read plus written)."""

    op: str
    nbytes: float


Op = Union[Gemm, GroupedGemm, Attention, MemOp]


@dataclass(frozen=True)
class Dims:
    """The sizes of one task (see the module docstring)."""

    T: int
    C: int
    b: int
    L: int
    M: int
    H: int
    E: int
    El: int
    k: int
    heads: int
    S: int
    swiglu: bool
    B: int
    R: int = 0  # xmoe's routing dimension d_r (0: the router is one GEMM u Wg^T)
    hd: int = 0  # head size d (0: M / heads)
    kv: int = 0  # key/value heads of grouped-query attention (0: heads)
    qk_norm: bool = False  # an RMSNorm over each query and key head (Qwen3)
    recipe: int = RECIPE  # the recipe version (:data:`RECIPE`)

    @property
    def d(self) -> int:
        """Head size."""
        return self.hd or self.M // self.heads

    @property
    def h_kv(self) -> int:
        """Key/value heads."""
        return self.kv or self.heads

    def head_ops(self, backward: bool) -> list["Op"]:
        """The kernels of grouped-query attention and qk_norm around the attention: the
        RMSNorm over q and k heads (T*(h + h_kv)*d elements read and written; backward
        twice), the repeat of k and v to every query head (reads 2*T*h_kv*d, writes
        2*T*h*d; backward the matching sum)."""
        T, d, B, h, kv = self.T, self.d, self.B, self.heads, self.h_kv
        ops: list[Op] = []
        if self.qk_norm:
            ops.append(MemOp("norm", (4.0 if backward else 2.0) * T * (h + kv) * d * B))
        if kv != h:
            ops.append(MemOp("elementwise", 2.0 * T * (kv + h) * d * B))
        return ops


def dims(m: MoEModel, tokens: int, ep: int = 1, bytes_per_elem: int | None = None,
         copies: int | None = None, recipe: int = RECIPE) -> Dims:
    """Sizes of a task on ``tokens`` tokens of model ``m`` with EP size ``ep``; ``bytes_per_elem``
    overrides the model dtype's (the CPU runs fp32), ``copies`` the routed copies received
    (default :func:`moesched.work.routed_copies`), ``recipe`` the recipe version."""
    L = min(m.seq_len, max(1, tokens))
    return Dims(T=tokens, C=work.routed_copies(m, tokens) if copies is None else copies, b=max(1, round(tokens / L)), L=L, M=m.d_model,
                H=m.ffn_hidden, E=m.experts, El=max(1, m.experts // max(1, ep)), k=m.top_k, heads=m.heads,
                S=m.shared_experts, swiglu=m.expert_kind == "swiglu",
                B=bytes_per_elem or m.bytes_per_elem, R=m.router_dim if m.router == "xmoe" else 0,
                hd=m.hd, kv=m.n_kv_heads, qk_norm=m.qk_norm, recipe=recipe)


def linear_bwd(m: int, n: int, k: int) -> list[Op]:
    """The two GEMMs of the backward of y[m, n] = x[m, k] w[n, k]^T: dX, then dW."""
    return [Gemm(m, k, n), Gemm(n, k, m)]


def _router_gemms(d: Dims) -> list[Op]:
    """The router's forward GEMMs: u Wg^T (T, E, M); xmoe (X-MoE eq. 4): the projection
    (T, R, M) then the cosine scores against the normalised expert embeddings (T, E, R)."""
    if not d.R:
        return [Gemm(d.T, d.E, d.M)]
    return [Gemm(d.T, d.R, d.M), Gemm(d.T, d.E, d.R)]


def _attn_core(d: Dims) -> list[Op]:
    """Attention, norms and router of attn_fwd, without the merge of the previous layer
    and the dispatch rows (what a DEP attention task runs)."""
    T, M, B = d.T, d.M, d.B
    return [MemOp("norm", 2.0 * T * M * B), Gemm(T, (d.heads + 2 * d.h_kv) * d.d, M), *d.head_ops(False),
            Attention(d.b * d.heads, d.L, d.d, True, False), MemOp("elementwise", 2.0 * T * M * B),
            Gemm(T, M, d.heads * d.d), MemOp("elementwise", 3.0 * T * M * B), MemOp("norm", 2.0 * T * M * B),
            *_router_gemms(d), MemOp("softmax", 2.0 * T * d.E * 4), MemOp("sort", 16.0 * T * d.k)]


def _fp32_cast_bytes(elems: float, B: int) -> float:
    """Bytes of casting ``elems`` fp32 elements to a model dtype of ``B`` bytes (read and
    write); none when the model runs in fp32 (no kernel)."""
    return (4.0 + B) * elems if B != 4 else 0.0


def _merge(d: Dims) -> list[Op]:
    """The merge of a layer's expert outputs (:func:`executor.tasks.merge`): the received
    copies put in place (C rows), then y = h + sum_j w_j comb_j (+ shared) with the routing
    weights in fp32, so the weighted copies are written and summed in fp32 (T*k*M*4 bytes
    each way) before the cast back to the model dtype."""
    T, M, B, k = d.T, d.M, d.B, d.k
    if d.recipe < 2:
        return [MemOp("gather", 2.0 * d.C * M * B), MemOp("elementwise", (T * k * M + 2 * T * M) * B)]
    cast = _fp32_cast_bytes(T * M, B)
    shared = 3.0 * T * M * B if d.S else 0.0
    return [MemOp("gather", 2.0 * d.C * M * B),
            MemOp("elementwise", T * k * M * (B + 8.0) + 4.0 * T * M + cast + 3.0 * T * M * B + shared)]


def _send_rows_bwd(d: Dims) -> list[Op]:
    """The combine_bwd send rows w * dy of a layer's kept copies (:func:`executor.tasks._mark_ready`):
    dy gathered per copy (C rows), weighted in fp32, cast back to the model dtype."""
    C, M, B = d.C, d.M, d.B
    if d.recipe < 2:
        return [MemOp("gather", 2.0 * C * M * B)]
    return [MemOp("gather", 2.0 * C * M * B), MemOp("elementwise", C * M * (B + 4.0) + _fp32_cast_bytes(C * M, B))]


def _attn_fwd(d: Dims) -> list[Op]:
    T, M, B = d.T, d.M, d.B
    return [*_merge(d), *_attn_core(d), MemOp("elementwise", 4.0 * T * M * B), MemOp("gather", 2.0 * d.C * M * B)]


def attention_core_ops(m: MoEModel, tokens: int, bytes_per_elem: int | None = None) -> list[Op]:
    """The operators of attn_fwd less the merge of the previous layer's expert outputs and
    the dispatch rows: attention, norms and router on ``tokens`` tokens (FinDEP's attention
    task, :func:`executor.dep.attention_task`)."""
    return _attn_core(dims(m, tokens, 1, bytes_per_elem))


def _attn_bwd(d: Dims) -> list[Op]:
    T, M, B = d.T, d.M, d.B
    ops: list[Op] = [MemOp("scatter_add", 3.0 * d.C * M * B), MemOp("elementwise", d.T * d.k * M * (B + 4.0))]
    router = linear_bwd(T, d.E, M) if not d.R else linear_bwd(T, d.E, d.R) + linear_bwd(T, d.R, M)
    ops += router + [MemOp("softmax", 3.0 * T * d.E * 4), MemOp("norm", 4.0 * T * M * B)]
    ops += linear_bwd(T, M, d.heads * d.d) + [Attention(d.b * d.heads, d.L, d.d, True, True),
                                              *d.head_ops(True), MemOp("elementwise", 2.0 * T * M * B)]
    ops += linear_bwd(T, (d.heads + 2 * d.h_kv) * d.d, M) + [MemOp("norm", 4.0 * T * M * B), MemOp("elementwise", 3.0 * T * M * B),
                                      *_send_rows_bwd(d)]
    return ops


def _ffn(kind: str, rows: float, groups: int, M: int, H: int, swiglu: bool, grouped: bool, B: int,
         recipe: int = RECIPE) -> list[Op]:
    """GEMMs of an FFN task over ``groups`` experts of ``rows`` rows (a grouped GEMM each, or
    one GEMM per expert), and its activation kernels. A grouped GEMM's output is added to
    the gradient (or SwiGLU's input gradient) by a separate kernel; from recipe 3 a loop of
    GEMMs has none, as ``addmm_`` accumulates inside the GEMM (:mod:`executor.ffn`)."""
    def g(n: int, k: int, wgrad: bool = False) -> list[Op]:
        if grouped:
            return [GroupedGemm(groups, rows, n, k, wgrad)]
        r = int(rows)
        return [Gemm(k, n, r) if wgrad else Gemm(r, n, k)] * groups if r else []
    adds = grouped or recipe < 3
    act = MemOp("elementwise", (3.0 if swiglu else 2.0) * groups * rows * H * B)
    if kind == "fwd":
        return g(H, M) + (g(H, M) if swiglu else []) + [act] + g(M, H)
    if kind == "dx":
        extra: list[Op] = g(M, H) + ([MemOp("elementwise", 3.0 * groups * rows * M * B)] if adds else []) \
            if swiglu else []
        return g(H, M) + [act, act] + g(M, H) + extra
    acc = [MemOp("elementwise", 3.0 * groups * M * H * B)] if adds else []
    return [act] + g(H, M, True) + acc + g(M, H, True) + acc + (g(M, H, True) + acc if swiglu else [])


def _expert(kind: str, d: Dims, grouped: bool) -> list[Op]:
    rows = d.C / d.El
    if not grouped:  # the loop's GEMMs are on whole rows: even split, the first C % El get one more
        base, extra = divmod(d.C, d.El)
        return _ffn(kind, base + 1, extra, d.M, d.H, d.swiglu, False, d.B, d.recipe) + \
            _ffn(kind, base, d.El - extra, d.M, d.H, d.swiglu, False, d.B, d.recipe) + _expert_mem(kind, d)
    return _ffn(kind, rows, d.El, d.M, d.H, d.swiglu, True, d.B, d.recipe) + _expert_mem(kind, d)


def _expert_mem(kind: str, d: Dims) -> list[Op]:
    """Row gathers and scatters around the expert GEMMs."""
    CM = d.C * d.M * d.B
    if kind == "fwd":
        return [MemOp("gather", 2.0 * CM), MemOp("gather", 2.0 * CM)]
    if kind == "dx":
        return [MemOp("gather", 2.0 * CM), MemOp("gather", 2.0 * d.C * d.H * d.B * (2 if d.swiglu else 1)),
                MemOp("gather", 2.0 * CM)]
    return [MemOp("gather", 2.0 * CM)]


def _shared(kind: str, d: Dims) -> list[Op]:
    hid = d.S * d.H
    ops = _ffn("fwd" if kind == "shared_fwd" else "dx", d.T, 1, d.M, hid, d.swiglu, False, d.B, d.recipe)
    if kind == "shared_bwd":
        ops += _ffn("dw", d.T, 1, d.M, hid, d.swiglu, False, d.B, d.recipe)
        if d.recipe >= 3:  # the input gradient copied into the layer's buffer
            ops.append(MemOp("elementwise", 2.0 * d.T * d.M * d.B))
    return ops


def task_ops(kind: str, m: MoEModel, tokens: int, ep: int = 1, grouped: bool | None = None,
             bytes_per_elem: int | None = None, copies: int | None = None, recipe: int = RECIPE) -> list[Op]:
    """The operators of one ``kind`` task on ``tokens`` tokens (see the module docstring).

    ``grouped``: whether the expert GEMMs are grouped (default: bf16 models, as
    :func:`executor.ffn.grouped`); ``bytes_per_elem``: the run's element size (default the
    model dtype's); ``recipe``: the recipe version a profile was fitted with (:data:`RECIPE`).
    A model without shared experts has no shared operators."""
    if kind not in ALL_COMPUTE_KINDS:
        raise ValueError(f"unknown compute task kind {kind!r}")
    d = dims(m, tokens, ep, bytes_per_elem, copies, recipe)
    grouped = m.dtype == "bf16" if grouped is None else grouped
    if kind == "attn_fwd":
        return _attn_fwd(d)
    if kind == "attn_bwd":
        return _attn_bwd(d)
    if kind.startswith("expert_"):
        return _expert(kind[len("expert_"):], d, grouped)
    if kind.startswith("shared_"):
        return _shared(kind, d) if d.S else []
    if d.recipe < 2:
        return [*_merge(d), MemOp("elementwise", 8.0 * d.T * d.M * 4)]
    return [*_merge(d), MemOp("elementwise", _loss_bytes(d)), *_send_rows_bwd(d)]


def _loss_bytes(d: Dims) -> float:
    """Bytes of the squared error and its gradient on the merged output (:func:`executor.tasks.loss`):
    output and target cast to fp32, difference, square, mean, scaled gradient, dy in the model dtype."""
    TM, B = d.T * d.M, d.B
    return TM * (40.0 + B) + 2.0 * _fp32_cast_bytes(TM, B)


def work_ops(kind: str, m: MoEModel, flops: float, ep: int = 1, grouped: bool | None = None,
             bytes_per_elem: int | None = None, recipe: int = RECIPE) -> list[Op]:
    """The operators of a ``kind`` task doing ``flops`` FLOPs (``loss``: elements) as the
    simulator charges it (:mod:`moesched.work`): its tokens (expert kinds: its copies) from
    the work; ``grouped``, ``bytes_per_elem`` and ``recipe`` as in :func:`task_ops`."""
    if flops <= 0:
        return []
    if kind.startswith("expert_"):
        c = copies_of(kind, m, flops)
        return task_ops(kind, m, max(1, round(c / m.top_k)), ep, grouped, bytes_per_elem, copies=c, recipe=recipe)
    return task_ops(kind, m, max(1, round(tokens_of(kind, m, flops))), ep, grouped, bytes_per_elem, recipe=recipe)


def bench_shape(m: MoEModel, kind: str, tokens: int) -> MoEModel:
    """The model shape the profiler times a ``kind`` task on ``tokens`` tokens with: whole
    samples of seq_len min(L, tokens), halved until it divides tokens; shared kinds of a
    model without shared experts time one."""
    seq = min(m.seq_len, tokens)
    while tokens % seq:
        seq //= 2
    shared = max(1, m.shared_experts) if kind.startswith("shared") else m.shared_experts
    return replace(m, seq_len=seq, micro_batch=tokens // seq, shared_experts=shared)


def tokens_of(kind: str, m: MoEModel, flops: float) -> float:
    """Tokens of a ``kind`` task doing ``flops`` FLOPs (``loss``: elements), inverting
    :mod:`moesched.work` (expert kinds: tokens whose routed copies do that work)."""
    if kind in ("attn_fwd", "attn_bwd"):
        per = work.attn_fwd_flops(m, 1) * (2.0 if kind == "attn_bwd" else 1.0)
    elif kind.startswith("expert_"):
        per = 2.0 * m.expert_gemms * m.d_model * m.ffn_hidden * m.top_k
    elif kind.startswith("shared_"):
        per = work.shared_fwd_flops(m, 1) * (2.0 if kind == "shared_bwd" else 1.0)
    else:
        per = float(m.d_model)
    return flops / per if per > 0 else 0.0


def copies_of(kind: str, m: MoEModel, flops: float) -> int:
    """Routed copies of an expert task doing ``flops`` FLOPs."""
    return max(0, round(flops / (2.0 * m.expert_gemms * m.d_model * m.ffn_hidden)))


def even_split(total: int, parts: int) -> list[int]:
    """``total`` routed copies spread evenly over ``parts`` experts: the first total % parts
    get one more."""
    base, extra = divmod(total, parts)
    return [base + (1 if e < extra else 0) for e in range(parts)]


def uneven_expert_ops(kind: str, m: MoEModel, group_copies: list[int], grouped: bool,
                      bytes_per_elem: int | None = None, recipe: int = RECIPE) -> list[Op]:
    """The operators of an expert task whose El local experts receive ``group_copies`` [El]
    routed copies (uneven routing). A loop of GEMMs (``grouped`` False) runs one GEMM per
    expert on exactly its rows. A grouped GEMM is priced on the mean rows with the table's
    linear spread ``skew`` matched to the groups' coefficient of variation cv: the spread
    rows*(1 + skew*(2g/(G-1) - 1)) has cv = skew*sqrt((G+1)/(3(G-1))), so skew =
    cv/sqrt((G+1)/(3(G-1))), at most 1. Row gathers and scatters and ``recipe`` as :func:`task_ops`."""
    El, C = len(group_copies), sum(group_copies)
    d = dims(m, max(1, round(C / m.top_k)), max(1, m.experts // max(1, El)), bytes_per_elem, copies=C, recipe=recipe)
    part = kind[len("expert_"):]
    if C <= 0:
        return []
    if not grouped:
        gemms = [op for c in group_copies if c for op in _ffn(part, c, 1, d.M, d.H, d.swiglu, False, d.B, d.recipe)]
        return gemms + _expert_mem(part, d)
    mean = C / El
    var = sum((c - mean) ** 2 for c in group_copies) / El
    spread = (El + 1) / (3 * (El - 1)) if El > 1 else 1.0
    skew = min(1.0, (var ** 0.5 / mean) / spread ** 0.5) if El > 1 else 0.0
    ops = _ffn(part, mean, El, d.M, d.H, d.swiglu, True, d.B, d.recipe)
    return [replace(o, skew=round(skew, 6)) if isinstance(o, GroupedGemm) else o for o in ops] + _expert_mem(part, d)


def saved_concat_ops(m: MoEModel, copies: int, bytes_per_elem: int | None = None) -> list[Op]:
    """The copy the first expert_dx task of a layer makes of the expert activations its
    forward chunks saved: ``executor.tasks._saved`` concatenates x [C, M], h1 [C, H] and
    (SwiGLU) h3 [C, H] of every forward chunk, C = the layer's ``copies`` on the rank. One
    memory-bound kernel moving those bytes read plus as many written. Micro-benchmarks
    never make it (``executor.profiling.bench`` runs expert_dx again on the cached copy)."""
    if copies <= 0:
        return []
    B = bytes_per_elem or m.bytes_per_elem
    hidden = m.ffn_hidden * (2 if m.expert_kind == "swiglu" else 1)
    return [MemOp("elementwise", 2.0 * copies * (m.d_model + hidden) * B)]
