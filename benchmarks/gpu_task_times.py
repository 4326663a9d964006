"""Single-GPU diagnosis of the executor's compute tasks: GPU time, host issue time and the
top kernels of each task kind, per model shape (validation configs), at the tokens of one
rank's step. Machine: one CUDA GPU (meant for nvidia-h200 or an H100). Repository root::

    PYTHONPATH=. python benchmarks/gpu_task_times.py [OUT_DIR]

Prints a table per shape and writes ``OUT_DIR/taskprof.json`` (one row per shape and task kind: GPU µs, host issue µs, top kernels).

GPU time: median of CUDA-event times of 10 back-to-back calls. Issue time: host seconds of
one call with the GPU kept busy before it (so a call that never syncs measures its launch
cost alone). A task whose issue time is close to its GPU time is launch-bound.
"""
from __future__ import annotations

import json
import os
import sys
import time
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile

from executor.profiling.bench import make_bench
from executor.profiling.timing import time_us
from moesched.configs import models_from_spec

KINDS = ("attn_fwd", "attn_bwd", "expert_fwd", "expert_dx", "expert_dw", "shared_fwd", "shared_bwd")


def gpu_us(fn, reps: int = 10) -> float:
    """The profiler's own timing (executor.profiling.timing.time_us) on this one GPU."""
    return time_us(SimpleNamespace(cuda=True, sync=torch.cuda.synchronize), fn, reps, 2)


def issue_us(fn) -> float:
    torch.cuda.synchronize()
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(20):
        a @ a                      # ~20 ms of queued GPU work: the call below only launches
    t0 = time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    torch.cuda.synchronize()
    return 1e6 * t


def check_grouped() -> None:
    """bf16 grouped GEMMs against the per-expert loop on the GPU, with an empty expert."""
    from executor.ffn import experts_dw, experts_dx, experts_fwd
    g = torch.Generator(device="cuda").manual_seed(0)
    El, M, H, ne = 4, 256, 512, [300, 0, 517, 64]
    r = lambda *s: (torch.randn(*s, generator=g, device="cuda") * 0.05).to(torch.bfloat16)  # noqa: E731
    for kind in ("gpt", "swiglu"):
        x, dy, w1, w2 = r(sum(ne), M), r(sum(ne), M), r(El, H, M), r(El, M, H)
        w3 = r(El, H, M) if kind == "swiglu" else None
        offs = torch.tensor(ne, device="cuda").cumsum(0).to(torch.int32)
        res = []
        for o in (None, offs):
            y, h1, h3 = experts_fwd(x, ne, o, w1, w2, w3, kind)
            dx, g1, g3 = experts_dx(dy, h1, h3, ne, o, w1, w2, w3, kind)
            gw = [torch.zeros_like(w) if w is not None else None for w in (w1, w2, w3)]
            experts_dw(dy, x, h1, h3, g1, g3, ne, o, *gw, kind)
            res.append([y, dx] + [t for t in gw if t is not None])
        err = max(float((a.float() - b.float()).abs().max() / (a.float().abs().max() + 1e-9))
                  for a, b in zip(*res))
        print(f"grouped vs loop ({kind}): max rel err {err:.2e}; empty expert grad max "
              f"{float(res[1][2][1].abs().max()):.1e}", flush=True)


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    models = models_from_spec("docs/validation_configs.json")
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    check_grouped()
    rows = []
    for m in models:
        if m.name not in ("gpt2xl-4L", "mixtral-2L", "deepseek-4L"):
            continue
        tokens = m.seq_len * m.micro_batch
        for kind in KINDS:
            if kind.startswith("shared") and not m.shared_experts:
                continue
            fn = make_bench(kind, m, tokens, "cuda", torch.bfloat16, ep=4)
            g, i = gpu_us(fn), issue_us(fn)
            loop = None
            if kind.startswith("expert"):
                os.environ["MOESCHED_GROUPED_MM"] = "0"
                loop = gpu_us(fn)
                os.environ["MOESCHED_GROUPED_MM"] = "1"
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            top = sorted(((e.key, e.device_time_total, e.count) for e in prof.key_averages() if e.device_time_total > 0),
                         key=lambda r: -r[1])[:12]
            nk = sum(e.count for e in prof.key_averages() if e.device_time_total > 0 and e.cpu_time_total == 0)
            rows.append({"model": m.name, "kind": kind, "tokens": tokens, "gpu_us": g, "issue_us": i, "loop_us": loop,
                         "top": [(k, round(t, 1), c) for k, t, c in top]})
            print(f"{m.name:12s} {kind:10s} gpu {g:8.1f} us  issue {i:8.1f} us  kernels~{nk}"
                  + (f"  (per-expert loop: {loop:8.1f} us)" if loop else ""), flush=True)
            for k, t, c in top[:8]:
                print(f"      {t:9.1f} us x{c:3d}  {k[:110]}")
    with open(f"{out}/taskprof.json", "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
