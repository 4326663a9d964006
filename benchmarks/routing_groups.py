"""Expert forward tasks on the uneven groups of a shipped routing trace: measured vs predicted.

For a model shape (default Mixtral-8x7B's experts: M 4096, H 14336, SwiGLU, 8 experts, top-2,
4096 tokens per rank) on an EP group of ``--ep`` ranks, every sampled step of the trace
(``moesched.imbalance.step_load``: the trace rescaled to the model) gives each EP rank its
copies per local expert. For each (step, rank) this times :func:`executor.ffn.experts_fwd`
(one grouped GEMM per weight in bf16 on a GPU; a loop of GEMMs in fp32 on a CPU) on those
uneven groups, on the same rows split evenly over the local experts, and on the even-routing
rows the plan assumes, and prints the profile's prediction for each
(:func:`moesched.imbalance.uneven_expert_us` on the profile's even price
``Profile.compute_us("expert_fwd", flops, shape, model, ep)``, as the simulator prices a
step under a trace). ``--cool-s`` idles the GPU that long before each timed case, so that
every case starts from the same clock and temperature state. One JSON line per case in
``--out``/routing_groups.jsonl: step, rank, groups, rows, measured_us, even_split_us,
predicted_us, even_predicted_us (the price of the same copies spread evenly), error_pct (predicted vs measured). The last line summarises the mean absolute
error of the uneven cases and of the even-routing case.

    python benchmarks/routing_groups.py --device cuda --out $OUT       # one H200 (gpu_routing.sh)
    python benchmarks/routing_groups.py --device cpu --small --out /tmp # the CPU smoke test
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from executor.profiling.timing import median_event_us  # noqa: E402
from moesched import work  # noqa: E402
from moesched.fileio import write_atomic  # noqa: E402
from moesched.imbalance import load_source, sample_steps, step_load, uneven_expert_us  # noqa: E402
from moesched.models import PRESETS  # noqa: E402
from moesched.ops import even_split  # noqa: E402
from moesched.profile import Profile  # noqa: E402

from executor.ffn import experts_fwd  # noqa: E402


def task(rows: list[int], w: tuple, device: torch.device, dtype: torch.dtype, kind: str):
    """experts_fwd on groups of ``rows`` rows (a closure to time)."""
    n, M = sum(rows), w[0].shape[2]
    x = torch.randn(n, M, device=device, dtype=dtype)
    offs = torch.tensor(list(_cumsum(rows)), device=device, dtype=torch.int32) if dtype == torch.bfloat16 else None
    return lambda: experts_fwd(x, rows, offs, w[0], w[1], w[2], kind)


def _cumsum(xs: list[int]):
    s = 0
    for x in xs:
        s += x
        yield s


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default="routing/bytelm-L4-E8-top2.jsonl")
    ap.add_argument("--model", default="Mixtral-8x7B")
    ap.add_argument("--ep", type=int, default=4)
    ap.add_argument("--profile", default="h200x4-nvlink")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--samples", type=int, default=4, help="trace steps sampled")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--cool-s", type=float, default=0.0, help="idle seconds before each timed case")
    ap.add_argument("--small", action="store_true", help="a small shape (CPU smoke test)")
    ap.add_argument("--out", required=True, help="folder for routing_groups.jsonl")
    a = ap.parse_args()
    m = PRESETS[a.model]
    if a.small:
        m = dataclasses.replace(m, d_model=64, ffn_hidden=128, seq_len=64, heads=4, kv_heads=None, dtype="fp32")
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if a.device == "cuda" and m.dtype == "bf16" else torch.float32
    prof = Profile.load(a.profile)
    El = m.experts // a.ep
    g = torch.Generator(device="cpu").manual_seed(0)
    w = tuple(None if (i == 2 and m.expert_kind != "swiglu") else
              (torch.randn(El, *shape, generator=g) * 0.02).to(dev, dtype)
              for i, shape in enumerate([(m.ffn_hidden, m.d_model), (m.d_model, m.ffn_hidden),
                                         (m.ffn_hidden, m.d_model)]))
    per_copy = work.expert_fwd_flops(m, 1) / m.top_k  # FLOPs of one routed copy
    trace = load_source(a.trace, m, _Cluster(a.ep))
    lines, errs = [], []
    even_rows = work.routed_copies(m, m.tokens)
    for s in sample_steps(trace, a.samples):
        sl = step_load(trace, s, m, a.ep)
        for r, groups in enumerate(sl.groups[0]):
            rows = list(groups)
            time.sleep(a.cool_s)
            meas = median_event_us(task(rows, w, dev, dtype, m.expert_kind), dev, a.reps)
            split = even_split(sum(rows), El)
            time.sleep(a.cool_s)
            even_split_us = median_event_us(task(split, w, dev, dtype, m.expert_kind), dev, a.reps)
            even_pred = prof.compute_us("expert_fwd", per_copy * sum(rows), m.shape_key(), m, a.ep)
            pred = uneven_expert_us(prof, "expert_fwd", m, tuple(rows), even_pred)
            err = 100 * (pred - meas) / meas
            errs.append(abs(err))
            lines.append({"step": s, "rank": r, "groups": rows, "rows": sum(rows), "measured_us": round(meas, 1),
                          "even_split_us": round(even_split_us, 1), "predicted_us": round(pred, 1),
                          "even_predicted_us": round(even_pred, 1),
                          "error_pct": round(err, 2)})
            print(json.dumps(lines[-1]), flush=True)
    split = [even_rows // El] * El
    time.sleep(a.cool_s)
    meas = median_event_us(task(split, w, dev, dtype, m.expert_kind), dev, a.reps)
    pred = prof.compute_us("expert_fwd", per_copy * even_rows, m.shape_key(), m, a.ep)
    summary = {"summary": True, "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
               "uneven_mean_abs_error_pct": round(statistics.mean(errs), 2),
               "even_routing_measured_us": round(meas, 1), "even_routing_predicted_us": round(pred, 1),
               "even_routing_error_pct": round(100 * (pred - meas) / meas, 2), "cool_s": a.cool_s}
    lines.append(summary)
    print(json.dumps(summary), flush=True)
    write_atomic(os.path.join(a.out, "routing_groups.jsonl"), "\n".join(json.dumps(x) for x in lines) + "\n")
    return 0


@dataclasses.dataclass(frozen=True)
class _Cluster:
    """What load_source reads of a cluster: its EP size."""

    ep_size: int


if __name__ == "__main__":
    raise SystemExit(main())
