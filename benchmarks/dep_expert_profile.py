"""Where a DEP expert task's time goes on one GPU: torch.profiler's CUDA kernel table of
:func:`executor.dep.expert_task` against the grouped expert forward alone, for one preset.

    PYTHONPATH=. python benchmarks/dep_expert_profile.py [--preset DeepSeek-V2-Lite] [--copies 24576]
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

from executor.dep import expert_task
from executor.ffn import experts_fwd
from executor.layers import LayerParams
from moesched.models import PRESETS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="DeepSeek-V2-Lite")
    ap.add_argument("--copies", type=int, default=24576)
    ap.add_argument("--eg", type=int, default=2)
    a = ap.parse_args()
    m = replace(PRESETS[a.preset], layers=1, dense_layers=(), dense_ffn_hidden=None)
    dev, dt = torch.device("cuda"), torch.bfloat16
    p = LayerParams(m, 0, a.eg, 0, 0, dev, dt)
    El = p.w1.shape[0]
    g = torch.Generator(device="cpu").manual_seed(0)
    lid = torch.randint(0, El, (a.copies,), generator=g).to(dev)
    got = torch.cat([torch.randn(a.copies, m.d_model, device=dev, dtype=dt), torch.rand(a.copies, 1, device=dev, dtype=dt),
                     lid[:, None].to(dt)], 1)
    x = got[:, :m.d_model].contiguous()
    counts = torch.bincount(lid, minlength=El)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    fns = {"expert_task": lambda: expert_task(m, p, got),
           "grouped kernel": lambda: experts_fwd(x, [], offs, p.w1, p.w2, p.w3, p.kind)}
    for name, fn in fns.items():
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        a0, a1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a0.record()
        for _ in range(10):
            fn()
        a1.record()
        torch.cuda.synchronize()
        print(f"{name}: {a0.elapsed_time(a1) / 10:.3f} ms per call (10 back to back)")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14))


if __name__ == "__main__":
    main()
