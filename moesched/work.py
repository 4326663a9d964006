"""Work per task: FLOPs of compute tasks and bytes of collectives, for ``tokens`` tokens.

All counts are per rank. A multiply-add is 2 FLOPs. Backward of a GEMM is two GEMMs of
the same size, one for the input gradient (dX) and one for the weight gradient (dW)
(Narayanan et al., SC'21, Sec. 5.1: backward = 2x forward).
"""
from __future__ import annotations

from dataclasses import dataclass

from moesched.models import MoEModel


def chunk_range(tokens: int, nchunks: int, c: int) -> tuple[int, int]:
    """Token range [a, b) of chunk ``c`` when ``tokens`` are cut into ``nchunks`` contiguous
    chunks (equal when ``nchunks`` divides ``tokens``, as the knobs demand; otherwise the
    first ``tokens % nchunks`` chunks take one more). The one definition the task graph and
    the executor share."""
    base, extra = divmod(tokens, nchunks)
    a = c * base + min(c, extra)
    return a, a + base + (1 if c < extra else 0)


def attn_fwd_flops(m: MoEModel, tokens: int) -> float:
    """Attention + norms + router for ``tokens`` tokens (whole samples of m.seq_len).

    Projections Q, K, V, O: 2 FLOPs per weight per token, 2*((h + 2 h_kv)*d*M + M*h*d)
    (h query heads, h_kv key/value heads, d head size; 8*M^2 without grouped-query
    attention); scores QK^T and A*V: 4*L*h*d FLOPs/token (Narayanan et al. SC'21 Eq. 2
    counts 24*B*L*M^2 + 4*B*L^2*M for a block, the attention part being 8 and 4); router
    2*M*E FLOPs/token.
    """
    m_, hd, h, kv = m.d_model, m.hd, m.heads, m.n_kv_heads
    proj = 2.0 * ((h + 2 * kv) * hd * m_ + m_ * h * hd)
    return tokens * (proj + 4.0 * m.seq_len * h * hd + 2.0 * m_ * m.experts)


def attn_bwd_flops(m: MoEModel, tokens: int) -> float:
    """Input and weight gradients of attention + router: 2x forward."""
    return 2.0 * attn_fwd_flops(m, tokens)


def routed_copies(m: MoEModel, tokens: int) -> int:
    """Token copies a rank sends to experts for ``tokens`` tokens: T*k, capped by capacity
    E*ceil(f*k*T/E) when a capacity factor is set (GShard). The executor sends only kept
    copies (no padding), so this is also what crosses the network."""
    full = tokens * m.top_k
    if m.capacity_factor is None:
        return full
    return min(full, m.slots_per_rank(tokens))


def expert_fwd_flops(m: MoEModel, tokens: int) -> float:
    """Routed experts on the copies one rank receives; under even routing a rank receives
    as many copies as it sends. (2 or 3 GEMMs) * 2*M*H FLOPs per copy."""
    return routed_copies(m, tokens) * 2.0 * m.expert_gemms * m.d_model * m.ffn_hidden


def shared_fwd_flops(m: MoEModel, tokens: int) -> float:
    """Shared experts on every local token."""
    return tokens * m.shared_experts * 2.0 * m.expert_gemms * m.d_model * m.ffn_hidden


def loss_elements(m: MoEModel, tokens: int) -> float:
    """Work of the loss task: elements of the last layer's output merged, T*M."""
    return float(tokens * m.d_model)


def a2a_bytes(m: MoEModel, tokens: int) -> int:
    """Bytes per rank of one dispatch (or combine) all-to-all: copies * M * dtype bytes.
    ScheMoE Sec. 3: S = f*k*B*L*M*b/8 bits."""
    return routed_copies(m, tokens) * m.d_model * m.bytes_per_elem


def dense_grad_bytes(m: MoEModel) -> int:
    """Gradient bytes per layer reduced over the data-parallel group."""
    return m.dense_params_per_layer() * m.bytes_per_elem


def expert_grad_bytes(m: MoEModel, ep: int) -> int:
    """Gradient bytes per layer of this rank's experts, reduced over the expert-DP group."""
    return (m.experts // ep) * m.expert_params() * m.bytes_per_elem


@dataclass(frozen=True)
class A2AHop:
    """The traffic of one hop of an all-to-all, per rank, under even routing.

    scope: profile scope the hop runs on ("intra", "inter" or the flat all-to-all's scope).
    buffer_bytes: the rank's send buffer (what the profile's all-to-all costs are keyed
        by: ``meta.x.comm`` = "all-to-all send buffer"); the part for the rank itself is a
        local copy.
    peers: other ranks the rank sends to (messages per rank).
    message_bytes: bytes of each message, buffer_bytes / (peers + 1).
    off_gpu_bytes: bytes that leave the GPU (buffer minus the rank's own part).
    off_node_bytes: bytes that leave the node (cross the inter-node network).
    """

    scope: str
    buffer_bytes: int
    peers: int
    message_bytes: float
    off_gpu_bytes: float
    off_node_bytes: float


def a2a_hops(nbytes: int, nodes: int, gpus_per_node: int, flat_scope: str,
             hierarchical: bool) -> list[A2AHop]:
    """The hops of one all-to-all of ``nbytes`` per rank (:func:`a2a_bytes`) over an EP group
    of ``nodes`` x ``gpus_per_node`` ranks, in dispatch order, with the bytes each carries.

    Flat (one NCCL all-to-all over all P = N*G ranks): P - 1 messages of B/P; B(P-1)/P
    leave the GPU, B(N-1)/N leave the node.

    Hierarchical, Tutel's 2DH all-to-all (Hwang et al., "Tutel", MLSys'23, Sec. 3.3 and
    ``tutel/impls/communicate.py``; the executor's :func:`executor.comm.hop_plan`):
    1. intra hop, over the node's G ranks: rank (n, g) sends local rank g' every row bound
       for (n', g') for all nodes n' -- B/G per peer, the whole buffer B; B(G-1)/G leaves
       the GPU over NVLink, nothing leaves the node. After it, rank (n, g') holds the
       node's rows bound for local index g' on every node: again B bytes under even routing.
    2. inter hop, over the N ranks of local index g (one per node; the G such groups run at
       once): N - 1 messages of B/N, G times larger than the flat all-to-all's B/(N*G);
       B(N-1)/N leave the node, exactly the flat all-to-all's off-node bytes. The node as a
       whole sends G*B(N-1)/N across the network either way: aggregation makes the
       messages fewer and larger, it does not reduce the bytes (DeepEP's internode kernels,
       by contrast, send a token to a node once for all its experts there; the executor
       sends copies, so that saving does not apply).
    So each hop carries a full buffer of B bytes, and each is priced by the profile's
    all-to-all on its scope at B: the inter hop's saving is the per-message latency of
    (N-1)(G-1) fewer messages, which the profile's ``inter`` measurement (N ranks, every
    local group at once) holds. Combine direction: the same hops in reverse order."""
    B, N, G = int(nbytes), int(nodes), int(gpus_per_node)
    if not hierarchical:
        P = N * G
        return [A2AHop(flat_scope, B, P - 1, B / P, B * (P - 1) / P, B * (N - 1) / N)]
    return [A2AHop("intra", B, G - 1, B / G, B * (G - 1) / G, 0.0),
            A2AHop("inter", B, N - 1, B / N, B * (N - 1) / N, B * (N - 1) / N)]
