"""Where the executor's host time goes: per task kind, the host issue time of real steps and
the torch operators and Python functions inside it, with CUDA graphs of the attention
block off and on. Machine: a CUDA host (meant for nvidia-h200-x4; ``--cluster 1x1`` with one
rank on nvidia-h200). Run under torchrun from the repository root::

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONPATH=. \
      torchrun --nproc_per_node=4 benchmarks/host_breakdown.py --profile profiles/h200x4-nvlink.json \
      --configs docs/validation_configs.json --only gpt2xl-4L --schedules vanilla,flowmoe --out $OUT/hb

Writes ``host_breakdown.json`` (rank 0): per (config, schedule, graphs) the median step time
(ms), the summed host issue time per task kind (µs, minus the time blocked on routing
counts), the top operators by self CPU time per kind (torch.profiler, one step) and the
top Python functions by own time (cProfile, one step).
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import os
import pstats
import statistics
import time
from collections import defaultdict

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile, record_function

from executor import issue
from executor.layers import TORCH_DTYPES, MoEModule, make_batch
from executor.runtime import PlannedStep
from executor.validate import make_plan
from moesched.cluster import Cluster
from moesched.configs import load_configs
from moesched.plan import Plan
from moesched.profile import Profile


def _tagged_call(orig):
    def call(ctx, name, a):
        with record_function(f"task::{a['kind']}"):
            return orig(ctx, name, a)
    return call


def op_table(prof, top: int) -> dict:
    """Self CPU µs per (task kind, operator) summed over the step's tasks of that kind."""
    acc: dict = defaultdict(lambda: defaultdict(float))
    for ev in prof.events():
        if not ev.name.startswith("task::"):
            continue
        kind = ev.name[6:]
        stack = list(ev.cpu_children)
        while stack:
            c = stack.pop()
            acc[kind][c.name] += c.self_cpu_time_total
            top_level_op = c.name.startswith("aten::") and not c.cpu_parent.name.startswith("aten::")
            acc[kind]["<ops>"] += top_level_op          # torch operators the task called itself
            stack.extend(c.cpu_children)
        acc[kind]["<task total>"] += ev.cpu_time_total
        acc[kind]["<tasks>"] += 1
    meta = ("<task total>", "<tasks>", "<ops>")
    return {k: {**{m: round(v[m], 1) for m in meta},
                **dict(sorted(((n, round(t, 1)) for n, t in v.items() if n not in meta), key=lambda kv: -kv[1])[:top])}
            for k, v in acc.items()}


def py_table(stats: pstats.Stats, top: int) -> list:
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]   # by own time
    return [[f"{os.path.relpath(f) if f.startswith('/') else f}:{ln}:{fn}", round(tt * 1e6, 1),
             round(ct * 1e6, 1), nc] for (f, ln, fn), (cc, nc, tt, ct, _) in rows]


def relabelled(path: str, prof: Profile, cluster: Cluster, folder: str, rank: int) -> str:
    """``path``, or where the profile was saved relabelled to the cluster's layout: these
    scripts measure host time, and the knobs of a plan come from the profile's costs."""
    if (cluster.nodes, cluster.gpus_per_node) == (prof.nodes, prof.gpus_per_node):
        return path
    hw = {**prof.hardware, "nodes": cluster.nodes, "gpus_per_node": cluster.gpus_per_node}
    out = os.path.join(folder, f"relabelled-{rank}.json")
    os.makedirs(folder, exist_ok=True)
    dataclasses.replace(prof, hardware=hw).save(out)
    return out


def setup(ap: argparse.ArgumentParser, steps: int, scratch: str | None = None) -> tuple:
    """The flags both host scripts take (plus the caller's own on ``ap``), the process group,
    and what they measure: (args, rank, device, cluster, profile path for plans, configs).
    ``scratch``: where a relabelled profile goes (default: ``--out``)."""
    ap.add_argument("--profile", required=True)
    ap.add_argument("--configs", required=True)
    ap.add_argument("--only", default="gpt2xl-4L")
    ap.add_argument("--schedules", default="vanilla,flowmoe")
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--cluster", default=None, help="NODESxGPUS (default: the profile's layout), e.g. 1x1")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rank = int(os.environ["RANK"])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    prof = Profile.load(args.profile)
    cluster = Cluster.parse(args.cluster) if args.cluster else Cluster(prof.nodes, prof.gpus_per_node)
    path = relabelled(args.profile, prof, cluster, scratch or args.out, rank)
    cfgs = [c for c in load_configs(args.configs) if c.name in args.only.split(",")]
    return args, rank, torch.device("cuda" if cuda else "cpu"), cluster, path, cfgs


def _step_times_ms(step: PlannedStep, x: torch.Tensor, t: torch.Tensor, n: int, sync) -> list[float]:
    """Wall time of each of `n` steps (ms), every rank starting together."""
    times = []
    for _ in range(n):
        dist.barrier()
        sync()
        t0 = time.perf_counter()
        step(x, t)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _host_per_kind(step: PlannedStep):
    """The last step's host time per task kind: count, host µs and wait µs (a DataFrame)."""
    host = step.timeline().host
    kinds = {n: a["kind"] for n, a, _ in step.steps}
    host = host.assign(kind=host.task.map(kinds), dur=host.end_us - host.start_us - host.wait_us)
    return host.groupby("kind").agg(n=("dur", "size"), host_us=("dur", "sum"),
                                    wait_us=("wait_us", "sum")).round(1)


def _profiled_step(step: PlannedStep, x: torch.Tensor, t: torch.Tensor, sync, top: int) -> tuple[list, list]:
    """One step under torch.profiler (top `top` ops) and one under cProfile (top 40 functions)."""
    dist.barrier()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        step(x, t)
        sync()
    dist.barrier()
    pr = cProfile.Profile()
    pr.enable()
    step(x, t)
    sync()
    pr.disable()
    return op_table(p, top), py_table(pstats.Stats(pr), 40)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--graphs", default="0,1")
    ap.add_argument("--top", type=int, default=12)
    args, rank, dev, cluster, args.profile, cfgs = setup(ap, steps=5)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    issue.call = _tagged_call(issue.call)
    out = []
    for c in cfgs:
        m = c.model
        dtype = TORCH_DTYPES[m.dtype] if cuda else torch.float32
        for sched in args.schedules.split(","):
            plan = Plan.from_dict(make_plan((args.profile, m.to_dict(), cluster.to_dict(), sched)))
            for g in args.graphs.split(","):
                os.environ["MOESCHED_CUDA_GRAPHS"] = g
                module = MoEModule(m, ep=cluster.ep_size, ep_rank=rank % cluster.ep_size, seed=0, device=dev,
                                   dtype=dtype)
                t_build = time.perf_counter()
                step = PlannedStep(module, plan)
                t_build = time.perf_counter() - t_build
                x, t = make_batch(m, rank, 0, device=dev, dtype=dtype)
                times = _step_times_ms(step, x, t, 2 + args.steps, sync)
                per_kind = _host_per_kind(step)
                ops, py = _profiled_step(step, x, t, sync, args.top)
                if rank == 0:
                    rec = {"config": c.name, "schedule": sched, "graphs": g, "graphs_captured": step.graphs is not None,
                           "build_s": round(t_build, 2), "step_ms": round(statistics.median(times[2:]), 3),
                           "step_ms_all": [round(v, 2) for v in times],
                           "host_total_us": round(float(per_kind.host_us.sum()), 1),
                           "per_kind": per_kind.reset_index().to_dict("records"),
                           "ops": ops, "python": py}
                    out.append(rec)
                    print(f"{c.name} {sched} graphs={g} ({rec['graphs_captured']}): step {rec['step_ms']} ms, "
                          f"host {rec['host_total_us'] / 1e3:.1f} ms, build {rec['build_s']} s", flush=True)
                    print(per_kind.to_string(), flush=True)
                del step, module
                if cuda:
                    torch.cuda.empty_cache()
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "host_breakdown.json"), "w") as f:
            json.dump(out, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
