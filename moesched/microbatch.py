"""Several micro-batches in one step: the stacked task graph and the published orders that
overlap the forward of one micro-batch with the backward of another, torch-free.

A step of ``m`` micro-batches (gradient accumulation, no pipeline stages) is the graph of
one micro-batch (:func:`moesched.graph.build` on ``micro_batch / m`` samples) copied ``m``
times, task ``t`` of micro-batch ``u`` named ``u{u}.t``; the micro-batches share no data,
only the rank's streams. The gradient all-reduce chunks appear once and wait for their
gradients in every micro-batch (the reduction of accumulated gradients runs during the last
micro-batch's backward: Megatron-Core ``--overlap-grad-reduce``, PyTorch DDP ``no_sync``).

An *order* is a list of every task name; run in strict mode (:func:`moesched.sim.simulate`
with ``strict=True``) each stream (compute, each link) runs its tasks in that order, waiting
for each one's inputs: what CUDA streams fed in a fixed order do. Orders here:

* :func:`sequential_order`: the micro-batches one after another, each in a single-micro-batch
  policy's order (what every policy of :mod:`moesched.schedules` does with accumulation).
* :func:`combined_1f1b_order`: Megatron-Core's combined 1F1B (``--overlap-moe-expert-parallel-comm``,
  ``megatron/core/pipeline_parallel/combined_1f1b.py``, ``TransformerLayerSchedulePlan.run``):
  forward of micro-batch u+1 layer i runs beside backward of micro-batch u layer L-1-i;
  compute stream ``attn_fwd | mlp_bwd -> mlp_bwd_dw -> mlp_fwd | attn_bwd``, comm stream
  ``combine_bwd | dispatch_fwd -> dispatch_bwd | combine_fwd`` (shared/papers/peer_frameworks.md).
* :func:`dualpipe_order`: DeepSeek-V3's forward/backward chunk pair (DeepSeek-V3 technical
  report, arXiv 2412.19437, §3.2.1 and Figure 4), in the issue order of DeepSeek's own
  profile of it (``DUALPIPE_PAIR``). Without pipeline stages there is no PP send/recv to
  hide and no bidirectional pipeline: only the chunk-pair overlap is modelled, and ATTN(W)
  stays inside ``attn_bwd`` (the graph does not split it). Per stream this order equals
  combined 1F1B's (which adopted it), so the two simulate alike on this graph.
"""
from __future__ import annotations

from dataclasses import replace

import networkx as nx

from moesched.errors import MoeschedError
from moesched.models import MoEModel

#: Megatron-Core / DeepSeek nodes of a layer -> task kinds, per phase (fine_grained_callables:
#: pre_dispatch_computation = attention + router, moe_dispatch, mlp (routed + shared experts),
#: moe_combine; backward splits mlp into mlp (dX) and mlp_dw (dW)).
NODES = {
    "fwd": {"attn": ("attn_fwd",), "dispatch": ("dispatch",), "mlp": ("expert_fwd", "shared_fwd"),
            "combine": ("combine",)},
    "bwd": {"combine": ("combine_bwd",), "mlp": ("expert_dx", "shared_bwd"), "mlp_dw": ("expert_dw",),
            "dispatch": ("dispatch_bwd",), "attn": ("attn_bwd",)},
}


def split_model(model: MoEModel, microbatches: int) -> MoEModel:
    """The model of one micro-batch: ``micro_batch / microbatches`` samples per rank; the
    micro-batches must divide the batch (MoeschedError, one line, otherwise)."""
    if not isinstance(microbatches, int) or microbatches < 1 or model.micro_batch % microbatches:
        raise MoeschedError(f"{microbatches} micro-batches do not divide the batch of {model.micro_batch} "
                            f"samples per rank of {model.name}")
    return replace(model, micro_batch=model.micro_batch // microbatches)


def mb_name(u: int, task: str) -> str:
    """Name of ``task`` of micro-batch ``u`` in the stacked graph."""
    return f"u{u}.{task}"


def is_grad(attrs: dict) -> bool:
    return attrs.get("kind") == "grad_ar"


def stack_graph(g1: nx.DiGraph, microbatches: int, inflight: int | None = 2) -> nx.DiGraph:
    """``microbatches`` copies of the one-micro-batch graph ``g1`` (attribute ``microbatch``
    on each copied task; ``seq`` micro-batch-major), its gradient chunks once, each waiting
    for its predecessors in every micro-batch. Graph attribute ``microbatches``.

    ``inflight``: at most that many micro-batches hold activations at once: the first tasks
    of micro-batch u + inflight wait for the last backward tasks of micro-batch u (2: the
    activation memory of 1F1B without stages, Narayanan et al. 2021 §2.2; None: no bound)."""
    n = g1.number_of_nodes()
    g = nx.DiGraph(**g1.graph)
    g.graph["microbatches"] = microbatches
    grads = {t for t, a in g1.nodes(data=True) if is_grad(a)}
    for u in range(microbatches):
        g.add_nodes_from((mb_name(u, t), {**a, "microbatch": u, "seq": u * n + a["seq"]})
                         for t, a in g1.nodes(data=True) if t not in grads)
        g.add_edges_from((mb_name(u, a), mb_name(u, b)) for a, b in g1.edges() if a not in grads and b not in grads)
        g.add_edges_from((mb_name(u, a), b) for a, b in g1.edges() if a not in grads and b in grads)
    g.add_nodes_from((t, {**g1.nodes[t], "seq": microbatches * n + g1.nodes[t]["seq"]}) for t in grads)
    g.add_edges_from((a, b) for a, b in g1.edges() if a in grads)
    if inflight is not None:
        roots = [t for t in g1 if t not in grads and g1.in_degree(t) == 0]
        sinks = [t for t in g1 if t not in grads and not any(s not in grads for s in g1.successors(t))]
        for u in range(microbatches - inflight):
            g.add_edges_from((mb_name(u, a), mb_name(u + inflight, b)) for a in sinks for b in roots)
    return g


def place_grads(order: list[str], g: nx.DiGraph) -> list[str]:
    """``order`` (tasks without gradient chunks) with every gradient chunk inserted right
    after the last of its predecessors (a bucket's all-reduce launched when it fills, as
    DDP and Megatron-Core's ``--overlap-grad-reduce`` do); chunks keep their own order."""
    pos = {t: i for i, t in enumerate(order)}
    grads = sorted((t for t, a in g.nodes(data=True) if is_grad(a)), key=lambda t: g.nodes[t]["seq"])
    after: dict[int, list[str]] = {}
    last = -1
    for t in grads:
        p = max([pos[q] for q in g.predecessors(t) if q in pos] + [last])
        after.setdefault(p, []).append(t)
        last = p
    out = list(after.get(-1, []))
    for i, t in enumerate(order):
        out.append(t)
        out += after.get(i, [])
    return out


def sequential_order(order1: list[str], g: nx.DiGraph) -> list[str]:
    """The micro-batches of stacked graph ``g`` one after another, each in the one-micro-batch
    order ``order1`` (names of ``g1``); the gradient chunks where ``order1`` puts them, in
    the last micro-batch (earlier ones only accumulate)."""
    m = int(g.graph["microbatches"])
    body = [mb_name(u, t) for u in range(m - 1) for t in order1 if mb_name(u, t) in g]
    return body + [mb_name(m - 1, t) if mb_name(m - 1, t) in g else t for t in order1]


def layer_nodes(g1: nx.DiGraph) -> dict[tuple[str, int], dict[str, list[str]]]:
    """(phase, layer) -> node -> the tasks of that node in creation order (chunks, hops)."""
    kind_node = {(ph, k): node for ph, nodes in NODES.items() for node, ks in nodes.items() for k in ks}
    out: dict[tuple[str, int], dict[str, list[str]]] = {}
    for t, a in sorted(g1.nodes(data=True), key=lambda x: x[1]["seq"]):
        node = kind_node.get((a["phase"], a["kind"]))
        if node is not None:
            out.setdefault((a["phase"], int(a["layer"])), {}).setdefault(node, []).append(t)
    return out


def _phase_tasks(g1: nx.DiGraph, phase: str) -> list[str]:
    """Tasks of ``phase`` (the loss counts as forward) in creation order."""
    return [t for t, a in sorted(g1.nodes(data=True), key=lambda x: x[1]["seq"]) if a["phase"] == phase]


#: One layer pair of combined 1F1B as issued (``TransformerLayerSchedulePlan.run``): (side,
#: node), side "f" the forward micro-batch at layer i, "b" the backward one at layer L-1-i.
MEGATRON_PAIR = (("f", "attn"), ("b", "combine"), ("f", "dispatch"), ("b", "mlp"), ("b", "dispatch"),
                 ("b", "mlp_dw"), ("f", "mlp"), ("f", "combine"), ("b", "attn"))
#: One layer pair of DualPipe as issued in DeepSeek's published profile
#: (shared/data/deepseek-v3-train-dualpipe.trace.json, user annotations of every layer:
#: combine(B) attn(F) mlp(B) dispatch(F) dispatch(B) mlp(W) mlp(F) attn(B) attn(W) combine(F);
#: attn(W) is inside attn_bwd here).
DUALPIPE_PAIR = (("b", "combine"), ("f", "attn"), ("b", "mlp"), ("f", "dispatch"), ("b", "dispatch"),
                 ("b", "mlp_dw"), ("f", "mlp"), ("b", "attn"), ("f", "combine"))


def _pair(nodes: dict, layers: int, f: int, b: int, issue: tuple[tuple[str, str], ...]) -> list[str]:
    """One forward/backward pair: forward of micro-batch f beside backward of micro-batch b,
    layer i of f with layer L-1-i of b, each layer pair in the ``issue`` order of nodes."""
    out: list[str] = []
    for i in range(layers):
        side = {"f": (f, nodes.get(("fwd", i), {})), "b": (b, nodes.get(("bwd", layers - 1 - i), {}))}
        for s, key in issue:
            u, nd = side[s]
            out += [mb_name(u, t) for t in nd.get(key, [])]
    return out


def paired_order(g1: nx.DiGraph, g: nx.DiGraph, style: str) -> list[str]:
    """Order of stacked graph ``g``: forward of micro-batch 0; then per u >= 1 the pair
    (forward of u, backward of u-1) interleaved by ``style`` ("megatron" or "dualpipe");
    then the backward of the last micro-batch; gradient chunks placed when ready. Tasks a
    pair does not name (the loss, dense-layer FFNs outside NODES) keep creation order at
    the end of their pair's forward or backward part."""
    m, L = int(g.graph["microbatches"]), int(g1.graph["model"].layers)
    issue = {"megatron": MEGATRON_PAIR, "dualpipe": DUALPIPE_PAIR}.get(style)
    if issue is None:
        raise MoeschedError(f"unknown cross-micro-batch style {style!r}; known: megatron, dualpipe")
    nodes = layer_nodes(g1)
    fwd, bwd = _phase_tasks(g1, "fwd"), _phase_tasks(g1, "bwd")
    order = [mb_name(0, t) for t in fwd]
    for u in range(1, m):
        body = _pair(nodes, L, u, u - 1, issue)
        seen = set(body)
        body += [mb_name(u, t) for t in fwd if mb_name(u, t) not in seen]
        body += [mb_name(u - 1, t) for t in bwd if mb_name(u - 1, t) not in seen]
        order += body
    order += [mb_name(m - 1, t) for t in bwd]
    return place_grads(order, g)


def combined_1f1b_order(g1: nx.DiGraph, g: nx.DiGraph) -> list[str]:
    """Megatron-Core's combined 1F1B order of stacked graph ``g`` (see the module docstring)."""
    return paired_order(g1, g, "megatron")


def dualpipe_order(g1: nx.DiGraph, g: nx.DiGraph) -> list[str]:
    """DualPipe's chunk-pair order of stacked graph ``g`` (see the module docstring)."""
    return paired_order(g1, g, "dualpipe")


def order_priority(order: list[str]) -> dict[str, float]:
    """Priorities (lower first) that make a strict simulation follow ``order``."""
    return {t: float(i) for i, t in enumerate(order)}
