"""The GEMM times the PPMoE layout relies on: a rank's E/t local experts run serially (one
GEMM per expert) against one grouped GEMM (``torch._grouped_mm``), per preset and TP size
(PPMoE's footnote 6: serial small expert GEMMs are about as fast as one big GEMM).

    python benchmarks/gpu_ppmoe.py --device cuda --out $OUT/ppmoe_gemms.json

For every preset and TP size t that divides its experts (2, 4, 8): the forward of the
experts (executor.ffn.experts_fwd: GPT 2 GEMMs + GELU, SwiGLU 3 GEMMs + SiLU) on the T*k
routed rows a rank runs under even routing (T = seq_len x micro_batch), split evenly over
E/t experts, in bf16; median of ``--repeats`` timed runs after warm-up. Writes one JSON
record per (preset, t): rows, experts, serial_us, grouped_us (None where grouped GEMM is
unavailable); and per (preset, t) with t = 1, 2, 4, 8 dividing heads and key/value heads,
``attn_us``: the forward of one rank's TP attention shard (executor.tp: its heads' QKV,
causal SDPA and row-parallel output projection, without the all-reduce) on the TP
group's t x B x L tokens, which the layout prices as the profile's attention at 1/t of
the projection and score FLOPs. The all-reduces need two GPUs and are not measured here
(one process).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataclasses import replace  # noqa: E402

from executor.ffn import experts_fwd  # noqa: E402
from executor.layers import LayerParams  # noqa: E402
from executor.tp import TPShard, _attention  # noqa: E402
from moesched.models import PRESETS  # noqa: E402


def timed_us(fn, device: torch.device, repeats: int) -> float:
    """Median µs of ``fn()`` over ``repeats`` runs after two warm-up runs."""
    for _ in range(2):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(out)


def measure(name: str, t: int, device: torch.device, repeats: int, max_rows: int | None) -> dict:
    m = PRESETS[name]
    el = m.experts // t
    rows = m.tokens * m.top_k if max_rows is None else min(m.tokens * m.top_k, max_rows)
    ne = [rows // el + (1 if e < rows % el else 0) for e in range(el)]
    dt = torch.bfloat16
    M, H = m.d_model, m.ffn_hidden
    x = torch.randn(rows, M, device=device, dtype=dt)
    w1 = torch.randn(el, H, M, device=device, dtype=dt) / M ** 0.5
    w3 = torch.randn(el, H, M, device=device, dtype=dt) / M ** 0.5 if m.expert_kind == "swiglu" else None
    w2 = torch.randn(el, M, H, device=device, dtype=dt) / H ** 0.5
    offs = torch.tensor(ne, device=device, dtype=torch.int32).cumsum(0).to(torch.int32)
    serial = timed_us(lambda: experts_fwd(x, ne, None, w1, w2, w3, m.expert_kind), device, repeats)
    try:
        grouped: float | None = timed_us(lambda: experts_fwd(x, ne, offs, w1, w2, w3, m.expert_kind), device, repeats)
    except (RuntimeError, NotImplementedError):
        grouped = None
    flops = rows * 2.0 * m.expert_gemms * M * H
    return {"preset": name, "tp": t, "local_experts": el, "rows": rows, "flops": flops, "serial_us": serial,
            "grouped_us": grouped, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}


def measure_attention(name: str, t: int, device: torch.device, repeats: int, max_tokens: int | None) -> dict:
    """Forward µs of rank 0's TP attention shard on the group's t x B x L tokens."""
    m = PRESETS[name]
    b = t * m.micro_batch if max_tokens is None else max(1, min(t * m.micro_batch, max_tokens // m.seq_len))
    small = replace(m, layers=1, experts=8, top_k=1, ffn_hidden=8, shared_experts=0)  # attention weights only
    full = LayerParams(small, 0, 1, 0, 0, device, torch.bfloat16)
    shard = TPShard(full, small, 0, t)
    xn = torch.randn(b * m.seq_len, m.d_model, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        us = timed_us(lambda: _attention(xn, shard, small, b, m.seq_len), device, repeats)
    return {"preset": name, "tp": t, "tokens": b * m.seq_len, "attn_us": us}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--max-rows", type=int, default=None, help="cap the routed rows and attention tokens (CPU smoke runs)")
    a = ap.parse_args()
    device = torch.device(a.device)
    recs = []
    for name in a.presets.split(","):
        for t in (2, 4, 8):
            if PRESETS[name].experts % t == 0:
                r = measure(name, t, device, a.repeats, a.max_rows)
                recs.append(r)
                print(json.dumps(r), flush=True)
    attn = []
    for name in a.presets.split(","):
        m = PRESETS[name]
        for t in (1, 2, 4, 8):
            if m.heads % t == 0 and m.n_kv_heads % t == 0:
                r = measure_attention(name, t, device, a.repeats, a.max_rows)
                attn.append(r)
                print(json.dumps(r), flush=True)
    Path(a.out).write_text(json.dumps({"experts": recs, "attention": attn}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
