"""Disaggregated attention/expert inference (DEP): FinDEP's cost model, schedule and solver.

FinDEP (seed 004; digest ``shared/papers/flexmoe_ppmoe_findep.md`` §3) serves a MoE forward
pass (prefill: the whole sequence) on ``ag`` attention GPUs, which hold attention and the
shared experts, and ``eg`` expert GPUs, which hold E/eg routed experts each, joined by
attention-to-expert (A2E) and expert-to-attention (E2A) transfers. A layer's batch is cut
into r1 micro-batches of m_a samples per attention GPU and each micro-batch's tokens into r2
chunks for the expert side; per layer t, micro-batch i and chunk j the tasks are attention
a(t,i) and shared expert s(t,i) on the attention group's compute, A2E(t,i,j) and E2A(t,i,j) on
the two links, and the experts e(t,i,j) on the expert group's compute.

Costs (ms; every task alpha + beta * x, the paper's Eq. 7-9):

* attention  t_a(m_a) = 2 t_gm(m_a S M n_h d_k) + 2 t_gm(m_a S M n_h d_v)
                        + t_attn(m_a S^2 n_h (d_k + d_v))                     (Eq. 1)
* shared     t_s(m_a) = 3 N_shared t_gm(m_a S M H)                            (Eq. 2)
* experts    t_e(m_e) = 3 (E/eg) t_gm(m_e M H)                                (Eq. 3)
* transfers  t_a2e(m_e) = t_e2a(m_e) = t_c(m_e E M / eg)                      (Eq. 4)
* token conservation m_a ag top_k S = m_e r2 E                                (Eq. 5, rule 10)

with t_gm(x) the GEMM line on x = m k n, t_attn the attention line and t_c the transfer
line, fitted per testbed (:data:`PAPER_COSTS`, the paper's Fig. 7 values).

:func:`makespan_ms` evaluates an issue order exactly (each resource runs its tasks in the
order given, each task as soon as its inputs and its resource allow); :func:`closed_form_ms`
is the paper's Eq. 13 for the ASAS order. Orders: ASAS (attention and shared expert of each
micro-batch alternate), AASS (all attention, then all shared experts), PPPipe (MegaScale-
Infer's ping-pong: r2 = 1 and the A2E waits for the shared expert), naive DEP (r1 = r2 = 1).
:mod:`moesched.findep_solve` holds Algorithm 1 and the baselines.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from moesched.errors import MoeschedError

if TYPE_CHECKING:
    from moesched.models import MoEModel

ORDERS = ("ASAS", "AASS")


@dataclass(frozen=True)
class Line:
    """t(x) = alpha_ms + beta_ms * x, in ms."""

    alpha_ms: float
    beta_ms: float

    def __call__(self, x: float) -> float:
        return self.alpha_ms + self.beta_ms * x if x > 0 else 0.0


@dataclass(frozen=True)
class DepCosts:
    """The three fitted lines of one testbed and (ag, eg) split (the paper's Fig. 7):
    GEMM on x = m k n, attention on x = n_h B S^2 (d_k + d_v), transfer on x = elements."""

    gemm: Line
    attn: Line
    comm: Line


#: FinDEP Fig. 7 (testbed A, 8 x RTX A6000): GEMM and attention lines, and the A2E line of
#: each (ag, eg) split it fitted.
PAPER_GEMM = Line(0.17, 8.59e-11)
PAPER_ATTN = Line(0.15, 1.54e-11)
PAPER_COMM = {(1, 7): Line(0.10, 9.61e-7), (2, 6): Line(0.01, 1.28e-6), (4, 4): Line(0.37, 2.55e-6)}
PAPER_COSTS = {split: DepCosts(PAPER_GEMM, PAPER_ATTN, c) for split, c in PAPER_COMM.items()}


@dataclass(frozen=True)
class DepModel:
    """A MoE model's shapes for DEP inference: T layers, sequence S, width M, n_h attention
    heads of d_k / d_v (n_kv key/value heads for the cache), expert hidden H, E routed experts,
    top_k, N_shared shared experts."""

    name: str
    layers: int
    seq_len: int
    d_model: int
    heads: int
    d_k: int
    d_v: int
    kv_heads: int
    ffn_hidden: int
    experts: int
    top_k: int
    shared: int
    bytes_per_elem: int = 2

    def __post_init__(self) -> None:
        for f in ("layers", "seq_len", "d_model", "heads", "d_k", "d_v", "kv_heads", "ffn_hidden", "experts", "top_k"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
                raise MoeschedError(f"DEP model {self.name}: {f} must be a positive integer, got {getattr(self, f)!r}")
        if self.shared < 0 or self.top_k > self.experts:
            raise MoeschedError(f"DEP model {self.name}: shared >= 0 and top_k <= experts")

    def with_seq(self, seq_len: int, layers: int | None = None) -> "DepModel":
        from dataclasses import replace
        return replace(self, seq_len=seq_len, layers=self.layers if layers is None else layers)


def dep_model(m: "MoEModel", seq_len: int | None = None) -> DepModel:
    """The DEP shapes of a moesched model (its heads, head size, key/value heads, experts and
    shared experts; the expert GEMMs counted as the paper's three per expert)."""
    hd = m.head_dim or m.d_model // m.heads
    return DepModel(m.name, m.layers, seq_len or m.seq_len, m.d_model, m.heads, hd, hd, m.kv_heads or m.heads,
                    m.ffn_hidden, m.experts, m.top_k, m.shared_experts, m.bytes_per_elem)


#: The paper's two models (its §5), at the layer counts of testbed A: DeepSeek-V2 (shared
#: experts; attention as MHA of 128 heads, the paper's Eq. 1) and Qwen3-235B-A22B.
PAPER_MODELS = {
    "DeepSeek-V2": DepModel("DeepSeek-V2", layers=8, seq_len=4096, d_model=5120, heads=128, d_k=128, d_v=128,
                            kv_heads=128, ffn_hidden=1536, experts=160, top_k=6, shared=2),
    "Qwen3-235B-A22B": DepModel("Qwen3-235B-A22B", layers=24, seq_len=8192, d_model=4096, heads=64, d_k=128,
                                d_v=128, kv_heads=4, ffn_hidden=1536, experts=128, top_k=8, shared=0),
}


@dataclass(frozen=True)
class DepConfig:
    """A DEP schedule: r1 micro-batches of m_a samples per attention GPU, r2 expert-side
    chunks, the attention group's order, and whether the A2E waits for the shared expert
    (PPPipe) or not (FinDEP)."""

    m_a: int
    r1: int
    r2: int
    order: str = "ASAS"
    a2e_after_shared: bool = False

    def __post_init__(self) -> None:
        if min(self.m_a, self.r1, self.r2) < 1:
            raise MoeschedError(f"DEP config: m_a, r1 and r2 must be >= 1, got {self.m_a}, {self.r1}, {self.r2}")
        if self.order not in ORDERS:
            raise MoeschedError(f"DEP config: order must be one of {ORDERS}, got {self.order!r}")


@dataclass(frozen=True)
class TaskTimes:
    """ms of one attention, shared-expert, expert and transfer task (Eq. 1-4)."""

    attn: float
    shared: float
    expert: float
    comm: float


def tokens_per_expert(m: DepModel, ag: int, m_a: int, r2: int) -> float:
    """m_e: token copies per expert in one chunk (Eq. 5, rule 10)."""
    return m_a * ag * m.top_k * m.seq_len / (r2 * m.experts)


def task_times(m: DepModel, c: DepCosts, ag: int, eg: int, m_a: int, r2: int) -> TaskTimes:
    """The four task times of Eq. 1-4 for m_a samples per attention GPU and r2 chunks."""
    S, M, H = m.seq_len, m.d_model, m.ffn_hidden
    t_a = (2 * c.gemm(m_a * S * M * m.heads * m.d_k) + 2 * c.gemm(m_a * S * M * m.heads * m.d_v)
           + c.attn(m_a * S * S * m.heads * (m.d_k + m.d_v)))
    t_s = 3 * m.shared * c.gemm(m_a * S * M * H)
    m_e = tokens_per_expert(m, ag, m_a, r2)
    t_e = 3 * (m.experts / eg) * c.gemm(m_e * M * H)
    t_c = c.comm(m_e * m.experts * M / eg)
    return TaskTimes(t_a, t_s, t_e, t_c)


def closed_form_ms(tt: TaskTimes, layers: int, r1: int, r2: int) -> float:
    """The ASAS makespan of the paper's Eq. 12-13 (ms)."""
    X = tt.attn + tt.shared
    Y = max(tt.expert, tt.comm)
    F = max(X, r2 * Y)
    G = tt.attn + 2 * tt.comm + tt.expert + (r2 - 1) * Y
    return (layers - 1) * max(G, r1 * F) + max(X, G) + (r2 - 1) * Y + (r1 - 1) * F


@dataclass(frozen=True)
class Schedule:
    """An evaluated order: makespan and the busy intervals (ms) of every resource."""

    makespan_ms: float
    intervals: dict[str, list[tuple[float, float]]]
    #: "a" (attention) or "s" (shared expert) of each interval of ``intervals["ag"]``
    ag_kinds: list[str] = field(default_factory=list)

    def exposed_comm_ms(self) -> float:
        """Time some transfer runs while neither compute resource does."""
        from moesched.sim import intersection_length, intervals_length, union_intervals
        comm = union_intervals([list(iv) for iv in self.intervals["a2e"] + self.intervals["e2a"]])
        comp = union_intervals([list(iv) for iv in self.intervals["ag"] + self.intervals["eg"]])
        return intervals_length(comm) - intersection_length(comm, comp)

    def exposed_intervals(self) -> list[tuple[float, float]]:
        """The (start, end) ms where some transfer runs while neither compute resource does."""
        from moesched.sim import uncovered_intervals, union_intervals
        comm = union_intervals([list(iv) for iv in self.intervals["a2e"] + self.intervals["e2a"]])
        comp = union_intervals([list(iv) for iv in self.intervals["ag"] + self.intervals["eg"]])
        return uncovered_intervals(comm, comp)


def ag_sequence(order: str, r1: int) -> list[tuple[str, int]]:
    """The attention group's tasks of one layer in ``order``: ("a"|"s", micro-batch)."""
    if order == "ASAS":
        return [(k, i) for i in range(r1) for k in ("a", "s")]
    return [("a", i) for i in range(r1)] + [("s", i) for i in range(r1)]


def makespan_ms(tt: TaskTimes, layers: int, cfg: DepConfig, ag_order: list[tuple[str, int]] | None = None) -> Schedule:
    """Evaluate a schedule exactly: every resource runs its tasks in order (the attention
    group ``ag_order`` or ``cfg.order`` per layer; links and experts by (layer, micro-batch,
    chunk)), each task at the earliest time its inputs and its resource allow."""
    r1, r2 = cfg.r1, cfg.r2
    seq = ag_order or ag_sequence(cfg.order, r1)
    pos = {task: j for j, task in enumerate(seq)}
    if sorted(seq) != sorted(ag_sequence("AASS", r1)) or any(pos[("a", i)] > pos[("s", i)] for i in range(r1)):
        raise MoeschedError("DEP attention order must hold a and s of every micro-batch once, a before s")
    free = {"ag": 0.0, "a2e": 0.0, "eg": 0.0, "e2a": 0.0}
    iv: dict[str, list[tuple[float, float]]] = {k: [] for k in free}
    kinds: list[str] = []
    ready = [0.0] * r1              # micro-batch i may start its next layer's attention
    for _t in range(layers):
        a_end, s_end = [0.0] * r1, [0.0] * r1
        for k, i in seq:
            dur = tt.attn if k == "a" else tt.shared
            start = max(free["ag"], ready[i] if k == "a" else a_end[i])
            free["ag"] = end = start + dur
            if dur > 0:
                iv["ag"].append((start, end))
                kinds.append(k)
            (a_end if k == "a" else s_end)[i] = end
        for i in range(r1):
            src = max(a_end[i], s_end[i]) if cfg.a2e_after_shared else a_end[i]
            last = 0.0
            for _j in range(r2):           # chunk j: A2E -> experts -> E2A, each after its input
                at = src
                for res, dur in (("a2e", tt.comm), ("eg", tt.expert), ("e2a", tt.comm)):
                    start = max(free[res], at)
                    free[res] = at = start + dur
                    iv[res].append((start, at))
                last = max(last, at)
            ready[i] = max(last, s_end[i])
    return Schedule(max(ready + [free["ag"]]), iv, kinds)


def throughput_tokens_s(m: DepModel, ag: int, cfg: DepConfig, span_ms: float) -> float:
    """Tokens per second of one forward pass: r1 m_a samples of S tokens on each of ag GPUs."""
    return cfg.r1 * cfg.m_a * ag * m.seq_len / (span_ms / 1e3) if span_ms > 0 else math.inf


def memory_bound(m: DepModel, ag: int, gpu_bytes: float, usable: float = 0.9) -> int:
    """M_max, the most samples an attention GPU holds at once (r1 m_a <= M_max, §4.3): GPU
    memory less the replicated attention and shared-expert weights of every layer, over one
    sample's key/value cache (T S 2 n_kv d_k bytes per element)."""
    b = m.bytes_per_elem
    weights = m.layers * (2 * m.d_model * m.heads * (m.d_k + m.d_v) + 3 * m.shared * m.d_model * m.ffn_hidden) * b
    kv = m.layers * m.seq_len * m.kv_heads * (m.d_k + m.d_v) * b
    return max(int((usable * gpu_bytes - weights) // kv), 0)
