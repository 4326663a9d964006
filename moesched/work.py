"""Work per task: FLOPs of compute tasks and bytes of collectives, for ``tokens`` tokens.

All counts are per rank. A multiply-add is 2 FLOPs. Backward of a GEMM is two GEMMs of
the same size, one for the input gradient (dX) and one for the weight gradient (dW)
(Narayanan et al., SC'21, Sec. 5.1: backward = 2x forward).
"""
from __future__ import annotations

from moesched.models import MoEModel


def attn_fwd_flops(m: MoEModel, tokens: int) -> float:
    """Attention + norms + router for ``tokens`` tokens (whole samples of m.seq_len).

    Projections Q, K, V, O: 8*M^2 FLOPs/token; scores QK^T and A*V: 4*L*M FLOPs/token
    (Narayanan et al. SC'21 Eq. 2 counts 24*B*L*M^2 + 4*B*L^2*M for a block, the
    attention part being 8 and 4); router 2*M*E FLOPs/token.
    """
    m_ = m.d_model
    return tokens * (8.0 * m_ * m_ + 4.0 * m.seq_len * m_ + 2.0 * m_ * m.experts)


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
