"""Hand-written feed-forward math shared by routed experts and shared experts.

Shapes: x [n, M] token copies; w1, w3 [H, M]; w2 [M, H]; h1, h3 [n, H] pre-activations;
dy [n, M] output gradient. GPT: y = gelu(x W1^T) W2^T (exact erf GELU). SwiGLU:
y = (silu(x W1^T) * (x W3^T)) W2^T. The backward is split like the task graph:
:func:`ffn_dx` (input gradient, also returns the activation gradients g_h1, g_h3) and
:func:`ffn_dw` (weight gradients accumulated in place into given gradient tensors).

Routed experts (``experts_*``): the rows x [n, M] are grouped by local expert, ``ne[e]``
rows for expert e; weights are stacked, w1, w3 [El, H, M], w2 [El, M, H]. In bf16 one
grouped GEMM (``torch._grouped_mm``) runs all experts of a task at once (three to six
kernel launches per task instead of that many per expert: high pipeline degrees and many
local experts are launch-bound otherwise); other dtypes loop over the experts.
``MOESCHED_GROUPED_MM=0`` forces the loop.

The GEMM shapes of these functions, per task, are listed in :func:`moesched.ops.task_ops`
(the recipe the profile's operator costs are composed from); ``tests/test_ops.py`` checks
that they match.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F


def activation(h1: torch.Tensor, h3: torch.Tensor | None, kind: str) -> torch.Tensor:
    """a [n, H] from the pre-activations."""
    if kind == "gpt":
        return F.gelu(h1)
    return F.silu(h1) * h3


def activation_bwd(g_a: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor | None, kind: str
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(g_h1, g_h3) [n, H] from g_a = dL/da, with ATen's fused GELU/SiLU backward kernels."""
    if kind == "gpt":
        return torch.ops.aten.gelu_backward(g_a, h1), None
    return torch.ops.aten.silu_backward(g_a * h3, h1), g_a * F.silu(h1)


def ffn_fwd(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor | None,
            kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Return (y [n, M], h1 [n, H], h3 [n, H] or None)."""
    h1 = x @ w1.t()
    h3 = x @ w3.t() if kind == "swiglu" else None
    y = activation(h1, h3, kind) @ w2.t()
    return y, h1, h3


def ffn_dx(dy: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor | None, w1: torch.Tensor, w2: torch.Tensor,
           w3: torch.Tensor | None, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Input gradient: g_a = dY W2, g_h = g_a * act'(h), dX = g_h1 W1 (+ g_h3 W3).

    Returns (dx [n, M], g_h1 [n, H], g_h3 [n, H] or None).
    """
    g_h1, g_h3 = activation_bwd(dy @ w2, h1, h3, kind)
    dx = g_h1 @ w1
    if g_h3 is not None:
        dx.addmm_(g_h3, w3)
    return dx, g_h1, g_h3


def ffn_dw(dy: torch.Tensor, x: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor | None,
           g_h1: torch.Tensor, g_h3: torch.Tensor | None, gw1: torch.Tensor, gw2: torch.Tensor,
           gw3: torch.Tensor | None, kind: str) -> None:
    """Accumulate dW2 += dY^T a, dW1 += g_h1^T x (dW3 += g_h3^T x) into gw1, gw2, gw3 in place."""
    gw2.addmm_(dy.t(), activation(h1, h3, kind))
    gw1.addmm_(g_h1.t(), x)
    if kind == "swiglu":
        gw3.addmm_(g_h3.t(), x)


# ---- routed experts: rows grouped by local expert ----------------------------------------
def grouped(x: torch.Tensor) -> bool:
    """Whether the grouped-GEMM path runs for rows x (bf16, and torch has it)."""
    return (x.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
            and os.environ.get("MOESCHED_GROUPED_MM", "1") != "0")


def _gmm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    return torch._grouped_mm(a, b, offs=offs)


def _slices(ne: list[int]) -> list[tuple[int, slice]]:
    out, o = [], 0
    for e, n in enumerate(ne):
        if n:
            out.append((e, slice(o, o + n)))
        o += n
    return out


def experts_fwd(x: torch.Tensor, ne: list[int], offs: torch.Tensor | None, w1: torch.Tensor, w2: torch.Tensor,
                w3: torch.Tensor | None, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(y [n, M], h1 [n, H], h3 [n, H] or None) of rows x [n, M] grouped by expert.

    offs: int32 [El] cumulative row ends on x's device (grouped path), or None to loop."""
    if offs is not None:
        h1 = _gmm(x, w1.transpose(1, 2), offs)
        h3 = _gmm(x, w3.transpose(1, 2), offs) if kind == "swiglu" else None
        return _gmm(activation(h1, h3, kind), w2.transpose(1, 2), offs), h1, h3
    n, H = x.shape[0], w1.shape[1]
    h1 = x.new_empty(n, H)
    h3 = x.new_empty(n, H) if kind == "swiglu" else None
    y = torch.empty_like(x)
    for e, sl in _slices(ne):
        torch.mm(x[sl], w1[e].t(), out=h1[sl])
        if h3 is not None:
            torch.mm(x[sl], w3[e].t(), out=h3[sl])
        torch.mm(activation(h1[sl], None if h3 is None else h3[sl], kind), w2[e].t(), out=y[sl])
    return y, h1, h3


def experts_dx(dy: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor | None, ne: list[int],
               offs: torch.Tensor | None, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor | None,
               kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(dx [n, M], g_h1 [n, H], g_h3 [n, H] or None) of rows grouped by expert."""
    if offs is not None:
        g_h1, g_h3 = activation_bwd(_gmm(dy, w2, offs), h1, h3, kind)
        dx = _gmm(g_h1, w1, offs)
        if g_h3 is not None:
            dx += _gmm(g_h3, w3, offs)
        return dx, g_h1, g_h3
    g_a = torch.empty_like(h1)
    for e, sl in _slices(ne):
        torch.mm(dy[sl], w2[e], out=g_a[sl])
    g_h1, g_h3 = activation_bwd(g_a, h1, h3, kind)
    dx = torch.empty_like(dy)
    for e, sl in _slices(ne):
        torch.mm(g_h1[sl], w1[e], out=dx[sl])
        if g_h3 is not None:
            dx[sl].addmm_(g_h3[sl], w3[e])
    return dx, g_h1, g_h3


def experts_dw(dy: torch.Tensor, x: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor | None,
               g_h1: torch.Tensor, g_h3: torch.Tensor | None, ne: list[int], offs: torch.Tensor | None,
               gw1: torch.Tensor, gw2: torch.Tensor, gw3: torch.Tensor | None, kind: str) -> None:
    """Accumulate the stacked weight gradients gw1, gw3 [El, H, M], gw2 [El, M, H] in place."""
    a = activation(h1, h3, kind)
    if offs is not None:
        gw2 += _gmm(dy.t(), a, offs)
        gw1 += _gmm(g_h1.t(), x, offs)
        if kind == "swiglu":
            gw3 += _gmm(g_h3.t(), x, offs)
        return
    for e, sl in _slices(ne):
        gw2[e].addmm_(dy[sl].t(), a[sl])
        gw1[e].addmm_(g_h1[sl].t(), x[sl])
        if kind == "swiglu":
            gw3[e].addmm_(g_h3[sl].t(), x[sl])
