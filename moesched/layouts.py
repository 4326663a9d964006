"""Parallel layouts of an MoE layer stack: EP (experts over an all-to-all group) and
Pipeline MoE's EP inside tensor parallelism (Chen et al., "Pipeline MoE", §3.3; digest in
shared/papers/flexmoe_ppmoe_findep.md §2).

A :class:`Layout` with ``tp == 1`` is the EP layout (data + expert parallel, all-to-alls;
:mod:`moesched.graph`). With ``tp = t > 1`` (PPMoE):

* the ranks form tensor-parallel (TP) groups of t consecutive ranks inside one node; a TP
  group is one data-parallel replica and processes t x B samples per step (the global
  batch is the EP layout's: t ranks x B samples), Tg = t * B * L tokens;
* attention is Megatron's column/row parallel pair (Shoeybi et al. 2019, §3): Q, K, V
  column parallel, output projection row parallel, heads split t ways, one all-reduce of
  [Tg, M] after it (forward) and one of its input gradient (backward); with sequence
  parallelism (Korthikanti et al. MLSys'23 §4.2.2) each all-reduce becomes a reduce-scatter
  plus an all-gather of the same tensor, and norms run on Tg/t tokens;
* the MoE layer: the router is replicated (every TP rank routes all Tg tokens and gets the
  same dispatch), rank i keeps its E/t local experts' rows by index slicing (PPMoE §3.3
  (iii)), runs them serially or as one grouped GEMM, writes them back by index assignment
  and one all-reduce of [Tg, M] sums the group's outputs (§3.3 (iv)); backward: the
  experts' dX, dW, and one all-reduce of the input gradient before the norm. No
  all-to-all. Under even routing a rank runs Tg*k/t = T*k routed copies: the EP layout's;
* gradients: dense and expert parameters are all-reduced over the DP group of the world/t
  ranks holding the same shard (one rank of each TP group).

:func:`layout_memory` gives the per-rank memory of a layout (:class:`moesched.memory.RankMemory`);
:mod:`moesched.layoutgraph` builds the task graph.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from moesched import memory, work
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.models import MoEModel


@dataclass(frozen=True)
class Layout:
    """tp: ranks of a TP group (1: the EP layout). sequence_parallel: reduce-scatter +
    all-gather instead of all-reduce (Korthikanti et al. §4.2.2). grouped_experts: the
    local experts as one grouped GEMM (else one GEMM per expert, serially: PPMoE §3.3 (i))."""

    tp: int = 1
    sequence_parallel: bool = False
    grouped_experts: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The plan file's ``layout`` record (:mod:`moesched.plan`)."""
        return {"tp": self.tp, "sequence_parallel": self.sequence_parallel, "grouped_experts": self.grouped_experts}

    @classmethod
    def from_dict(cls, d: Any) -> "Layout":
        """Parse a plan's ``layout`` record; a one-line MoeschedError on any bad field."""
        keys = {"tp", "sequence_parallel", "grouped_experts"}
        if not isinstance(d, dict) or set(d) != keys:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise MoeschedError(f"layout must be an object with keys {sorted(keys)}, got {got}")
        tp = d["tp"]
        if not isinstance(tp, int) or isinstance(tp, bool) or tp < 2:
            raise MoeschedError(f"layout.tp must be an integer >= 2 (omit the layout for EP plans), got {tp!r:.40}")
        for key in ("sequence_parallel", "grouped_experts"):
            if not isinstance(d[key], bool):
                raise MoeschedError(f"layout.{key} must be true or false, got {d[key]!r:.40}")
        return cls(tp, d["sequence_parallel"], d["grouped_experts"])

    def label(self) -> str:
        if self.tp == 1:
            return "EP (all-to-all)"
        return f"PPMoE TP{self.tp}" + ("+SP" if self.sequence_parallel else "") + \
            ("" if self.grouped_experts else " serial")


def check_layout(model: MoEModel, cluster: Cluster, layout: Layout) -> None:
    """Raise a one-line MoeschedError when ``layout`` does not divide ``model`` on ``cluster``:
    TP inside a node (divides the GPUs per node), dividing heads, key/value heads, experts
    and the shared experts' hidden size."""
    t = layout.tp
    if not isinstance(t, int) or isinstance(t, bool) or t < 1:
        raise MoeschedError(f"layout: TP size must be a positive integer, got {t!r}")
    if t == 1:
        return
    for what, n in (("GPUs per node", cluster.gpus_per_node), ("heads", model.heads),
                    ("key/value heads", model.n_kv_heads), ("experts", model.experts)):
        if n % t:
            raise MoeschedError(f"layout {layout.label()}: TP {t} does not divide the {n} {what} of "
                                f"{model.name} on {cluster.nodes}x{cluster.gpus_per_node}")
    if model.shared_experts and model.ffn_hidden % t:
        raise MoeschedError(f"layout {layout.label()}: TP {t} does not divide the shared experts' hidden size "
                            f"{model.ffn_hidden}")
    if model.dense_layers and (model.dense_ffn_hidden or 0) % t:
        raise MoeschedError(f"layout {layout.label()}: TP {t} does not divide the dense layers' FFN hidden size "
                            f"{model.dense_ffn_hidden}")


def tp_cluster(cluster: Cluster, layout: Layout) -> Cluster:
    """The cluster whose groups are the layout's: ``ep`` = TP size, so that group "ep" of
    :func:`moesched.collectives.cluster_group` is the TP group (t consecutive ranks) and
    "expert_dp" the DP group of world/t ranks (one per TP group)."""
    return replace(cluster, ep=layout.tp)


def group_tokens(model: MoEModel, layout: Layout) -> int:
    """Tokens a TP group processes per step, Tg = t * B * L."""
    return layout.tp * model.tokens


def attn_fwd_flops(model: MoEModel, layout: Layout) -> float:
    """One TP rank's attention forward FLOPs: projections and scores split t ways, the
    router replicated (:func:`moesched.work.attn_fwd_flops`'s terms: projections and
    scores per token split, 2ME whole)."""
    tg, router = group_tokens(model, layout), 2.0 * model.d_model * model.experts
    return tg * ((work.attn_fwd_flops(model, 1) - router) / layout.tp + router)


def local_experts(model: MoEModel, layout: Layout) -> int:
    """Routed experts held by one rank: E/t (PPMoE: N*T = E)."""
    return model.experts // layout.tp


def expert_calls(model: MoEModel, layout: Layout) -> tuple[int, float]:
    """(GEMM calls, FLOPs per call) of one rank's routed experts forward: one grouped call,
    or E/t serial calls. Even routing: a rank runs T*k copies (work.expert_fwd_flops on T)."""
    total = work.expert_fwd_flops(model, model.tokens)
    n = 1 if layout.grouped_experts else local_experts(model, layout)
    return n, total / n


def tp_bytes(model: MoEModel, layout: Layout) -> int:
    """Bytes of one TP collective's buffer: the [Tg, M] layer output (the profile's x for
    all-reduce, reduce-scatter input and all-gather output alike)."""
    return group_tokens(model, layout) * model.d_model * model.bytes_per_elem


def layer_param_counts(model: MoEModel, layout: Layout, layer: int) -> tuple[int, int]:
    """(dense, expert) parameters of layer ``layer`` on one rank: attention projections,
    shared experts and a dense layer's FFN split t ways, norms (q/k norms too) and router
    replicated; E/t routed experts (:class:`executor.tp.TPShard` allocates exactly these
    for MoE layers; tested)."""
    t, m_ = layout.tp, model.d_model
    qk = 2 * model.hd if model.qk_norm else 0  # the q/k norm weights: replicated
    attn = (model.attention_params() - qk) // t + qk + 2 * m_
    if model.is_dense(layer):
        return attn + model.dense_ffn_params() // t, 0
    dense = attn + m_ * model.experts + model.shared_experts * model.expert_params() // t
    return dense, local_experts(model, layout) * model.expert_params()


def param_counts(model: MoEModel, layout: Layout) -> tuple[int, int]:
    """(dense, expert) parameters of one rank over all layers (:func:`layer_param_counts`),
    the embeddings, output head and final norm (:meth:`MoEModel.embedding_params`) whole."""
    per = [layer_param_counts(model, layout, l) for l in range(model.layers)]
    return sum(d for d, _ in per) + model.embedding_params(), sum(e for _, e in per)


def _attention_activation_bytes(model: MoEModel, layout: Layout) -> int:
    """Bytes the attention of one layer keeps on one TP rank (Korthikanti et al. Eq. 2: the
    [Tg, M] tensors around the norms replicated, or split with sequence parallelism (Eq. 4);
    those inside attention split t ways: q, SDPA output and its copy 3 [Tg, h*d], k and v
    2 [Tg, h_kv*d], their repeated copies 2 [Tg, h*d] under grouped-query attention), the
    fp32 log-sum-exp [Tg, h/t], norm rstd and router probabilities [Tg, E]."""
    t, b, M = layout.tp, model.bytes_per_elem, model.d_model
    tg = group_tokens(model, layout)
    rep = tg // t if layout.sequence_parallel else tg  # tokens of a replicated [., M] tensor
    hq, hkv = model.heads * model.hd, model.n_kv_heads * model.hd
    inner = 3 * hq + 2 * hkv + (2 * hq if model.n_kv_heads != model.heads else 0)
    return (4 * rep * M + tg * inner // t) * b + 4 * (tg * model.heads // t + 2 * rep + tg * model.experts)


def activation_bytes_per_layer(model: MoEModel, layout: Layout, layer: int = -1) -> int:
    """Bytes layer ``layer`` keeps for backward on one TP rank: the attention's
    (:func:`_attention_activation_bytes`) and, for an MoE layer, the replicated routing
    (weights, indices, kept flags for Tg*k), owner state and the rank's T*k routed rows
    (gathered input, pre-activations, outputs); for a dense layer its FFN's input and output
    gradient [Tg, M] (replicated or SP-split) and pre-activations split t ways."""
    t, b, M, H, k = layout.tp, model.bytes_per_elem, model.d_model, model.ffn_hidden, model.top_k
    tg, T = group_tokens(model, layout), model.tokens
    g = model.expert_gemms - 1
    rep = tg // t if layout.sequence_parallel else tg
    attention = _attention_activation_bytes(model, layout)
    if layer >= 0 and model.is_dense(layer):
        return attention + (2 * rep * M + g * tg * (model.dense_ffn_hidden or 0) // t) * b
    owner = 3 * rep * M * b + tg * k * (4 + 8 + 1)
    if model.shared_experts:
        owner += (2 * rep * M + g * tg * model.shared_experts * H // t) * b
    expert = (2 * T * k * M + g * T * k * H) * b
    return attention + owner + expert


def layout_memory(model: MoEModel, cluster: Cluster, layout: Layout, zero: int = 0) -> memory.RankMemory:
    """Per-rank memory of ``layout`` (:class:`moesched.memory.RankMemory`, bytes): the
    model (:func:`moesched.memory.rank_memory`) for tp == 1; for PPMoE the parameters of
    :func:`param_counts`, Adam state ZeRO-sharded over the DP group (world/t ranks), the
    activations of :func:`activation_bytes_per_layer` and no all-to-all buffers."""
    check_layout(model, cluster, layout)
    if layout.tp == 1:
        return memory.rank_memory(model, cluster, zero)
    if zero not in memory.ZERO_STAGES:
        raise MoeschedError(f"ZeRO stage must be one of {memory.ZERO_STAGES}, got {zero!r}")
    dense, expert = param_counts(model, layout)
    b = model.bytes_per_elem
    dp = cluster.world // layout.tp
    state = memory.ADAM_MOMENT_BYTES + (memory.MASTER_COPY_BYTES if b < 4 else 0)
    params = (dense + expert) * b
    grads = params // dp if zero >= 2 else params
    optimizer = (dense + expert) * state // (dp if zero >= 1 else 1)
    act = sum(activation_bytes_per_layer(model, layout, l) for l in range(model.layers)) + \
        memory.lm_activation_bytes(model)
    return memory.RankMemory(int(params), int(grads), int(optimizer), int(act), 0)
