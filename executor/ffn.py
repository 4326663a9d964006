"""Hand-written feed-forward math shared by routed experts and shared experts.

Shapes: x [n, M] token copies; w1, w3 [H, M]; w2 [M, H]; h1, h3 [n, H] pre-activations;
dy [n, M] output gradient. GPT: y = gelu(x W1^T) W2^T (exact erf GELU). SwiGLU:
y = (silu(x W1^T) * (x W3^T)) W2^T. The backward is split like the task graph:
:func:`ffn_dx` (input gradient, also returns the activation gradients g_h1, g_h3) and
:func:`ffn_dw` (weight gradients accumulated in place into given gradient tensors).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def activation(h1: torch.Tensor, h3: torch.Tensor | None, kind: str) -> torch.Tensor:
    """a [n, H] from the pre-activations."""
    if kind == "gpt":
        return F.gelu(h1)
    return F.silu(h1) * h3


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
    g_a = dy @ w2
    if kind == "gpt":
        deriv = 0.5 * (1.0 + torch.erf(h1 * _INV_SQRT2)) + h1 * torch.exp(-0.5 * h1 * h1) * _INV_SQRT_2PI
        g_h1, g_h3 = g_a * deriv, None
        dx = g_h1 @ w1
    else:
        s = torch.sigmoid(h1)
        g_h3 = g_a * (h1 * s)
        g_h1 = g_a * h3 * (s * (1.0 + h1 * (1.0 - s)))
        dx = g_h1 @ w1 + g_h3 @ w3
    return dx, g_h1, g_h3


def ffn_dw(dy: torch.Tensor, x: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor | None,
           g_h1: torch.Tensor, g_h3: torch.Tensor | None, gw1: torch.Tensor, gw2: torch.Tensor,
           gw3: torch.Tensor | None, kind: str) -> None:
    """Accumulate dW2 += dY^T a, dW1 += g_h1^T x (dW3 += g_h3^T x) into gw1, gw2, gw3 in place."""
    gw2.addmm_(dy.t(), activation(h1, h3, kind))
    gw1.addmm_(g_h1.t(), x)
    if kind == "swiglu":
        gw3.addmm_(g_h3.t(), x)
