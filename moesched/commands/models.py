"""``moesched models``: the model presets as an aligned table."""
from __future__ import annotations

import argparse
from typing import Sequence

from moesched import dense
from moesched.models import PRESETS, MoEModel

HELP = "list the model presets"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool] | None = None) -> str:
    """Align ``rows`` under ``headers`` in columns separated by two spaces; ``right[i]``
    right-aligns column i (numbers)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = list(right) if right is not None else [False] * len(headers)
    lines = []
    for r in cells:
        parts = [c.rjust(w) if rj else c.ljust(w) for c, w, rj in zip(r, widths, right)]
        lines.append("  ".join(parts).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def total_params(m: MoEModel) -> int:
    """Parameters of the whole model: every layer (attention, norms, router, shared and all
    routed experts; dense layers whole) and, with a vocabulary, the token embedding, output
    head and final norm (:func:`moesched.dense.param_counts` at EP 1)."""
    return sum(dense.param_counts(m, 1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    headers = ["name", "layers", "d_model", "heads", "kv", "seq", "batch", "ffn", "experts", "top_k", "capacity",
               "shared", "dense", "kind", "dtype", "params (B)"]
    rows = []
    for m in PRESETS.values():
        cap = "dropless" if m.capacity_factor is None else f"{m.capacity_factor:g}"
        rows.append([m.name, m.layers, m.d_model, m.heads, m.n_kv_heads, m.seq_len, m.micro_batch, m.ffn_hidden,
                     m.experts, m.top_k, cap, m.shared_experts, len(m.dense_layers), m.expert_kind, m.dtype,
                     f"{total_params(m) / 1e9:.2f}"])
    right = [False] + [True] * 12 + [False, False, True]
    print(format_table(headers, rows, right))
    print("\nkv: key/value heads; seq, batch: tokens per sample and samples per rank per step; dense: layers "
          "without experts;\nparams: the whole model, embeddings included where the preset has a vocabulary.")
    return 0
