"""The DEP forward tasks on one GPU, measured against the profile's prices (issue 24).

    PYTHONPATH=. python benchmarks/gpu_findep.py --out $OUT/findep          # one H200, ~1-2 min
    PYTHONPATH=. python benchmarks/gpu_findep.py --cpu --small --out /tmp/f   # CPU smoke run

For each preset (DeepSeek-V2-Lite, Qwen3-30B-A3B, Mixtral-8x7B; one layer's weights), each
sequence length of ``--seqs`` and each micro-batch size m_a of ``--m-a``, the executor's own
DEP tasks (:mod:`executor.dep`) on one device, in the model's dtype:

* ``attn``: :func:`executor.dep.attention_task` (attention, norms, router) on m_a samples;
* ``shared``: :func:`executor.dep.shared_task` on the same m_a S tokens (presets with shared experts);
* ``expert``: :func:`executor.dep.expert_task` of one expert GPU (E/eg local experts) on the
  m_a ag top_k S / (r2 eg) copies it receives in one chunk, spread evenly over its experts.

Each is timed as the profiler times compute (device time alone: a spin kernel puts the host ahead; ``perf_counter`` on CPU) after warm-up, median of
``--repeats``. The same tasks are priced exactly as ``moesched solve --mode inference``
does (:func:`moesched.findep_profile.profile_times` on ``--profile``; ms). Writes
``findep_tasks.csv``, ``findep_tasks.json`` (rows, summary, environment) and prints a
table with each row's error (priced / measured - 1, %) and the mean / max |error| per task.
Expert rows also give ``train_kernel_ms``: the training executor's expert kernel
(:func:`executor.ffn.experts_fwd`, grouped GEMM on a GPU) on the same copies, which the
profile's ``expert_fwd`` was measured on -- the gap to ``measured_ms`` is the DEP task's own
per-expert gather/scatter.
``price_source`` says which profile data priced the row
(:func:`moesched.findep_profile.price_sources`): ``dep`` (the DEP task's own curve on this
model shape, from ``moesched profile --inference``, which times these very closures,
:func:`executor.profiling.dep.task_fns`), else the training curves: ``shape`` (a curve measured on
this exact model shape), ``ops`` (operator tables) or ``line`` (the per-kind line fitted over
all shapes). Transfers are priced by the cluster model and are not measured (one GPU).
Imports neither ortools nor any moesched solver that would.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from executor.ffn import experts_fwd, grouped  # noqa: E402
from executor.layers import LayerParams  # noqa: E402
from executor.profiling.dep import DTYPES, REPS, WARMUP, expert_input, layer_model, task_fns  # noqa: E402
from executor.profiling.timing import gpu_time_us  # noqa: E402
from moesched.findep_profile import price_sources, profile_times  # noqa: E402
from moesched.models import PRESETS, MoEModel  # noqa: E402
from moesched.profile import Profile  # noqa: E402

PRESET_NAMES = ("DeepSeek-V2-Lite", "Qwen3-30B-A3B", "Mixtral-8x7B")
TOLERANCE_PCT = 5.0


def small_model(m: MoEModel) -> MoEModel:
    """A shrunk copy of ``m`` for CPU smoke runs (same kinds, tiny sizes, fp32)."""
    return replace(m, d_model=64, heads=4, kv_heads=None, head_dim=None, ffn_hidden=32, experts=min(m.experts, 8),
                   top_k=min(m.top_k, 2), seq_len=32, dtype="fp32", layers=1, dense_layers=(), dense_ffn_hidden=None)


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = WARMUP) -> float:
    """Median ms of ``fn()`` over ``repeats`` runs after ``warmup`` runs
    (:func:`executor.profiling.timing.gpu_time_us`: device time alone, as the profile)."""
    return gpu_time_us(fn, device, repeats, warmup) / 1e3


def grouped_reference(m: MoEModel, p: LayerParams, got: torch.Tensor) -> Callable[[], object]:
    """The training executor's expert kernel (:func:`executor.ffn.experts_fwd`, grouped GEMM
    where the device has one, the kernel the profile's ``expert_fwd`` measured) on the same
    copies sorted by expert: the reference that separates the DEP task's own overhead."""
    M = m.d_model
    lid = got[:, M + 1].long()
    order = torch.argsort(lid, stable=True)
    x = got[order, :M].contiguous()
    ne = torch.bincount(lid, minlength=p.w1.shape[0]).tolist()
    offs = torch.tensor(ne, device=x.device).cumsum(0).to(torch.int32) if grouped(x) else None
    return lambda: experts_fwd(x, ne, offs, p.w1, p.w2, p.w3, m.expert_kind)


def measure_model(m: MoEModel, profile: Profile, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Measured and priced rows of every task of ``m`` at every m_a of ``args.m_a``."""
    dtype = DTYPES[m.dtype]
    ag, eg, r2 = args.ag, args.eg, args.r2
    p = LayerParams(m, 0, eg, 0, 0, device, dtype)       # attention, router, shared, E/eg experts
    times, source = profile_times(m, profile, ag, eg), price_sources(m, profile, eg)
    rows = []
    for m_a in args.m_a:
        t = times(m_a, r2)
        priced = {"attn": t.attn, "shared": t.shared, "expert": t.expert}
        got = expert_input(m, eg, m_a * ag * m.top_k * m.seq_len // (r2 * eg), device, dtype)
        for task, (fn, n) in task_fns(m, p, m_a, got, device, dtype).items():   # as the profiler times them
            ref = grouped_reference(m, p, got) if task == "expert" else None
            with torch.no_grad():
                meas = time_ms(fn, device, args.repeats)
                ref_ms = None if ref is None else _reference_ms(ref, device, args.repeats)
            rows.append({"preset": m.name, "seq_len": m.seq_len, "m_a": m_a, "task": task, "rows": n,
                         "measured_ms": round(meas, 4), "priced_ms": round(priced[task], 4),
                         "err_pct": round(100.0 * (priced[task] / meas - 1.0), 2),
                         "price_source": source[task], "train_kernel_ms": ref_ms})
            print(_fmt(rows[-1]), flush=True)
        del got
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _reference_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float | None:
    """The reference kernel's ms, or None where this torch cannot run it (it is a diagnostic)."""
    try:
        return round(time_ms(fn, device, repeats), 4)
    except (RuntimeError, NotImplementedError) as e:
        print(f"reference expert kernel failed ({str(e).splitlines()[0][:120]}); left out", flush=True)
        return None


def summary(rows: list[dict]) -> dict:
    """Mean and max |error| (%) per task and over all rows, and the rows within 5%."""
    out = {}
    for task in ["all"] + sorted({r["task"] for r in rows}):
        errs = [abs(r["err_pct"]) for r in rows if task in ("all", r["task"])]
        out[task] = {"rows": len(errs), "mean_abs_err_pct": round(statistics.mean(errs), 2),
                     "max_abs_err_pct": round(max(errs), 2),
                     "within_5pct": sum(e <= TOLERANCE_PCT for e in errs)}
    return out


HEAD = (f"{'preset':18} {'S':>5} {'m_a':>3} {'task':6} {'rows':>8} {'measured ms':>11} {'priced ms':>10} {'err %':>7}"
        f"  {'source':6} {'train kernel ms':>15}")


def _fmt(r: dict) -> str:
    return (f"{r['preset']:18} {r['seq_len']:>5} {r['m_a']:>3} {r['task']:6} {r['rows']:>8} {r['measured_ms']:>11.3f} "
            f"{r['priced_ms']:>10.3f} {r['err_pct']:>+7.1f}  {r['price_source']:6} "
            f"{'' if r['train_kernel_ms'] is None else format(r['train_kernel_ms'], '.3f'):>15}")


def write_outputs(out: Path, rows: list[dict], summ: dict, meta: dict) -> None:
    """``findep_tasks.csv`` (one row per measurement) and ``findep_tasks.json`` (all)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "findep_tasks.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "findep_tasks.json").write_text(json.dumps({"meta": meta, "summary": summ, "rows": rows}, indent=1) + "\n")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for findep_tasks.csv / .json")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (smoke run; times are not the GPU's)")
    ap.add_argument("--small", action="store_true", help="tiny shapes of the presets (fp32, S = 32, m_a 1,2)")
    ap.add_argument("--presets", default=",".join(PRESET_NAMES))
    ap.add_argument("--seqs", type=ints, default=[1024, 4096], help="sequence lengths S (default 1024,4096)")
    ap.add_argument("--m-a", type=ints, default=[1, 2, 4, 8], help="micro-batch sizes m_a (samples)")
    ap.add_argument("--ag", type=int, default=2, help="attention GPUs of the split priced (sets the expert rows)")
    ap.add_argument("--eg", type=int, default=2, help="expert GPUs of the split priced (E/eg local experts)")
    ap.add_argument("--r2", type=int, default=1, help="token chunks per micro-batch on the expert side")
    ap.add_argument("--repeats", type=int, default=REPS, help="timed runs per task (default: the profiler's)")
    ap.add_argument("--profile", default="profiles/h200x4-nvlink.json")
    a = ap.parse_args(argv)
    if a.small:
        a.seqs, a.m_a, a.repeats = [32], [1, 2], min(a.repeats, 3)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    device = torch.device("cpu" if a.cpu or not torch.cuda.is_available() else "cuda")
    profile = Profile.load(a.profile)
    t0, rows = time.perf_counter(), []
    print(HEAD)
    for name in a.presets.split(","):
        for seq in a.seqs:
            m = small_model(PRESETS[name]) if a.small else layer_model(replace(PRESETS[name], seq_len=seq))
            if m.experts % a.eg:
                print(f"skip {name}: {m.experts} experts do not divide over eg = {a.eg}")
                continue
            rows += measure_model(m, profile, a, device)
            if a.small:
                break
    summ = summary(rows)
    for task, s in summ.items():
        print(f"{task:7}: {s['rows']:3} rows, mean |err| {s['mean_abs_err_pct']:6.2f}%, max |err| "
              f"{s['max_abs_err_pct']:6.2f}%, within 5%: {s['within_5pct']}/{s['rows']}")
    meta = {"command": " ".join(sys.argv), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "profile": profile.name, "ag": a.ag, "eg": a.eg, "r2": a.r2,
            "repeats": a.repeats, "seconds": round(time.perf_counter() - t0, 1)}
    write_outputs(Path(a.out), rows, summ, meta)
    print(f"wrote {a.out}/findep_tasks.csv and findep_tasks.json ({meta['seconds']} s, {meta['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
