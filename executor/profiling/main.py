"""Measure a profile on the target devices: ``torchrun --nproc_per_node=N -m moesched profile``.

Times (a) every compute task kind through the runtime's own task functions
(:mod:`executor.profiling.bench`) over a grid of token counts per model shape, x = FLOPs
from :mod:`moesched.work`; (b) the collectives the executor uses (all-to-all with even and
uneven splits, all-reduce, all-gather, reduce-scatter) over message sizes on each group
scope (intra, inter, world); (c) interference of compute and a collective running at the
same time; (d) the per-task overhead at a tiny size; (e) a replay check on points held
out of the fit (:mod:`executor.profiling.measure`); (f) on GPUs, the host issue cost of
every task kind from real executor steps (:mod:`executor.profiling.host`); (g) the operator
tables (GEMMs, grouped GEMMs, attention, memory-bound kernels per dtype,
:mod:`executor.profiling.ops`), from which task costs of unprofiled shapes are composed
(:mod:`moesched.ops`, :mod:`moesched.optables`), with a per-kind correction fitted on (a); (h) with
``--inference``, the forward-only DEP inference tasks of each model (:mod:`executor.profiling.dep`,
the profile's ``dep`` section). Medians of
``reps`` runs after warm-up: CUDA events on GPU (a barrier before each collective),
``perf_counter`` on CPU. Rank 0 fits (:mod:`moesched.costs`) and writes the profile
atomically at the very end, so a failed run leaves the old file intact.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist

from executor.profiling import host as hostprof
from executor.profiling.context import Ctx
from executor.profiling.dep import n_points as dep_points, measure_dep
from executor.profiling.measure import (OPS, Grid, make_grid, measure_comm, measure_compute,
                                        measure_count_exchange, measure_interference)
from executor.profiling.ops import measure_ops
from executor.profiling.timing import host_probe_us
from moesched.cluster import Cluster
from moesched.configs import models_from_spec
from moesched.costs.build import dep_curves, profile_from_samples
from moesched.costs.calibrate import with_host
from moesched.costs.opsfit import fit_corrections, fit_summary
from moesched.optables import OpTables
from moesched.errors import MoeschedError
from moesched.kinds import ALL_COMPUTE_KINDS
from moesched.models import MoEModel
from moesched.profile import Profile

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
GPU_MODELS = ("Mixtral-8x7B", "DeepSeek-V2-Lite", "GPT2-XL-MoE")
CPU_MODELS = ("GPT2-Tiny-MoE",)


def _versions(ctx: Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                           "host": platform.node(), "backend": dist.get_backend()}
    if ctx.cuda:
        out.update(cuda=torch.version.cuda, nccl=".".join(map(str, torch.cuda.nccl.version())),
                   gpu=torch.cuda.get_device_name(ctx.device))
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            smi = ""
        out["driver"] = smi.split("\n")[0].strip() or None
    return out


def _regime(nodes: int, emulated: bool) -> str:
    """Default hardware.regime label from the transport settings."""
    p2p_off, shm_off = (os.environ.get(k) == "1" for k in ("NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE"))
    base = "cpu-gloo" if not torch.cuda.is_available() else \
        ("sockets" if shm_off else "host-memory") if p2p_off else "nvlink"
    return f"{nodes}nodes-{base}-sockets" if emulated and torch.cuda.is_available() else base


def _meta(ctx: Ctx, args: argparse.Namespace, grid: Grid, models: list[MoEModel]) -> dict[str, Any]:
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_") or k in SAFE_ENV}
    cmd = " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items() if k not in ("NCCL_HOSTID", "NCCL_VERSION")] +
                   [f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', ctx.world)} -m moesched"] +
                   [shlex.quote(a) for a in sys.argv[1:]])
    return {"command": cmd, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **_versions(ctx), "world_size": ctx.world, "nodes": ctx.nodes, "gpus_per_node": ctx.gpn,
            "emulated_nodes": bool(args.emulate_nodes), "env": env, "models": [m.name for m in models],
            "model_configs": {m.name: m.to_dict() for m in models},  # what --refit composes tasks of
            "bench": "executor.profiling.bench.make_bench, ep = world size where it divides experts, else 1",
            "grid": {"tokens": list(grid.tokens), "replay_tokens": list(grid.replay_tokens),
                     "tiny_tokens": grid.tiny_tokens, "sizes_bytes": list(grid.sizes),
                     "replay_sizes_bytes": list(grid.replay_sizes), "reps": grid.reps, "warmup": grid.warmup,
                     "comm_passes": grid.comm_passes},
            "x": {"compute": "FLOPs (moesched.work)", "comm": "bytes of each rank's buffer: all-to-all send "
                  "buffer, all-reduce tensor, all-gather output, reduce-scatter input"}}


@dataclass
class HostRows:
    """What the host calibration measured, gathered from every rank
    (:func:`executor.profiling.host.measure_host`); empty when it was skipped."""

    samples: list = field(default_factory=list)   # (shape key, kind, x, r, µs)
    lags_us: list = field(default_factory=list)   # host-to-GPU lag samples, µs
    a2a: list = field(default_factory=list)       # (shape key, scope, bytes, smallest µs, median µs)
    compute: list = field(default_factory=list)   # (shape key, kind, FLOPs, GPU µs)
    probe_us: list = field(default_factory=list)  # host probe of every rank (median over passes), µs
    step_us: list = field(default_factory=list)   # (shape key, plan, pass, step call µs), every rank


def _progress(ctx: Ctx, models: list[MoEModel], grid: Grid, host_steps: int, n_dep: int = 0) -> Any:
    """The progress bar (rank 0, stderr) over every timing this rank takes part in."""
    from tqdm import tqdm
    n_comp = len(models) * len(ALL_COMPUTE_KINDS) * (len(grid.tokens) + len(grid.replay_tokens)) \
        + len(ALL_COMPUTE_KINDS) + n_dep
    n_comm = len(ctx.scopes) * len(OPS) * (len(grid.sizes) + len(grid.replay_sizes)) * grid.comm_passes
    if ctx.rank == 0:
        print(f"profiling: {n_comp} compute timings ({math.ceil(n_comp / ctx.world)} per rank), "
              f"{n_comm // grid.comm_passes} collective timings on scopes {sorted(ctx.scopes)} in {grid.comm_passes} passes, "
              f"x{grid.reps} runs each", file=sys.stderr)
    n_host = sum(len(hostprof.VARIANTS) + (m.layers > 1) for m in models) * max(host_steps, 0)
    return tqdm(total=math.ceil(n_comp / ctx.world) + n_comm + 2 + n_host, disable=ctx.rank != 0,
                file=sys.stderr, desc="profile", unit="pt")


def _measure_host(ctx: Ctx, models: list[MoEModel], steps: int, bar: Any) -> HostRows:
    """The host issue cost of every task kind, from real executor steps, and the host probe."""
    mine = hostprof.measure_host(models, Cluster(ctx.nodes, ctx.gpn), ctx.rank, ctx.device, steps=steps,
                                 tick=lambda: bar.update(1), probe=lambda: host_probe_us(ctx.device))
    every = ctx.gather(mine)
    return HostRows([r for h in every for r in h.samples], [x for h in every for x in h.lags_us],
                    hostprof.a2a_samples([h.a2a for h in every]), [r for h in every for r in h.compute],
                    [statistics.median(h.probes_us) for h in every], [r for h in every for r in h.step_us])


def _hardware(ctx: Ctx, args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    """The profile's ``hardware`` section of this cluster."""
    mem = torch.cuda.get_device_properties(ctx.device).total_memory if ctx.cuda \
        else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"gpu": meta.get("gpu") or f"CPU ({platform.machine()})", "nodes": ctx.nodes, "gpus_per_node": ctx.gpn,
            "gpu_memory_bytes": int(mem), "regime": args.regime or _regime(ctx.nodes, bool(args.emulate_nodes))}


def _with_ops(prof: Profile, tables: dict[str, Any], models: list[MoEModel], compute: list, ctx: Ctx) -> Profile:
    """``prof`` with its operator tables and the per-kind corrections of their composition,
    fitted on the profiled shapes' task samples (role "fit") of each dtype
    (:func:`moesched.costs.opsfit.fit_corrections`); ``meta.ops_fit`` holds the
    composition's error on every task sample (fit and replay), before and after the
    correction (:func:`moesched.costs.opsfit.fit_summary`)."""
    ops = OpTables.from_dict({"tables": tables, **({} if ctx.cuda else {"runs_as": "fp32"})})
    ops, rows = fit_corrections(ops, {m.name: m for m in models}, compute, ctx.world)
    summary = fit_summary(ops, rows)
    print(f"operator composition, mean error per kind on the profiled shapes (corrected): "
          f"{ {k: v['corrected']['mean_pct'] for k, v in summary.items()} }", file=sys.stderr)
    return replace(prof, ops=ops, meta=dict(prof.meta, ops_fit=summary))


def _fit(ctx: Ctx, args: argparse.Namespace, meta: dict[str, Any], models: list[MoEModel], compute: list,
         comm: list, inter: dict[str, Any], inter_ar: dict[str, Any], host: HostRows, t_start: float,
         ops_tables: dict[str, Any] | None = None, dep_rows: list | None = None) -> Profile:
    """Rank 0: the profile fitted from every measurement (:mod:`moesched.costs`)."""
    if host.probe_us:
        meta["host_probe_us"] = max(host.probe_us)  # the slowest rank's host sets a collective's start
    if host.step_us:
        meta["host_pass_spread_pct"] = hostprof.pass_spread(host.step_us)
    hw = _hardware(ctx, args, meta)
    name = args.name or os.path.splitext(os.path.basename(args.out))[0]
    desc = f"measured: {ctx.world} x {hw['gpu']} as {ctx.nodes} node(s) x {ctx.gpn}, {hw['regime']}"
    prof = profile_from_samples(name, desc, hw, meta, compute, comm, inter["compute_slowdown"],
                                inter["comm_slowdown"], duration_s=time.time() - t_start,
                                shape_of={m.name: m.shape_key() for m in models})
    prof = replace(prof, interference_by_op={"all_reduce": (inter_ar["compute_slowdown"], inter_ar["comm_slowdown"])})
    if ops_tables:
        prof = _with_ops(prof, ops_tables, models, compute, ctx)
    if dep_rows:
        dep, fits = dep_curves(dep_rows)
        prof = replace(prof, dep=dep, meta=dict(prof.meta, fits=dict(prof.meta.get("fits") or {}, **fits),
                                                dep={"samples": [list(r) for r in dep_rows],
                                                     "x": "tokens (dep_attn, dep_shared), copies (dep_expert)"}))
    if host.samples:
        prof = with_host(prof, host.samples, hostprof.lag_us(host.lags_us), host.a2a, host.compute)
        print(f"host issue µs (median per kind): {hostprof.summary(host.samples)}, lag "
              f"{prof.host.lag_us} µs", file=sys.stderr)
        print(f"in-situ compute factors: {prof.meta.get('insitu_compute')}", file=sys.stderr)
    return prof


def main(args: argparse.Namespace) -> int:
    """Measure and write the profile; every rank runs this."""
    t_start = time.time()
    if not {"RANK", "WORLD_SIZE"} <= set(os.environ):
        raise MoeschedError("measuring a profile runs under torchrun: "
                            "torchrun --nproc_per_node=N -m moesched profile --out FILE")
    for k, v in SAFE_ENV.items():
        os.environ.setdefault(k, v)
    cuda = torch.cuda.is_available()
    models = models_from_spec(args.models or ",".join(GPU_MODELS if cuda else CPU_MODELS))
    grid = dataclasses.replace(make_grid(cuda, args.quick), comm_passes=args.comm_passes)
    ctx = Ctx(args.emulate_nodes)
    try:
        host_steps = args.host_steps if args.host_steps is not None else (3 if cuda else 0)
        inference = bool(getattr(args, "inference", False))
        bar = _progress(ctx, models, grid, host_steps, dep_points(models, args.quick) if inference else 0)
        compute = measure_compute(ctx, models, grid, bar)
        dep_rows = measure_dep(ctx, models, args.quick, bar) if inference else []
        t_ops = time.time()
        ops_tables = measure_ops(ctx, ["bf16", "fp32"] if cuda else ["fp32"], args.quick)
        if ctx.rank == 0:
            print(f"operator tables: {sum(len(r) for t in ops_tables.values() for r in t.values())} rows in "
                  f"{time.time() - t_ops:.1f} s", file=sys.stderr)
        comm, comm_spread, comm_pass_us = measure_comm(ctx, grid, bar)
        exchange_us = measure_count_exchange(ctx, grid)
        compute = [(n, k, t, x, us + exchange_us if k == "attn_fwd" else us, role) for n, k, t, x, us, role in compute]
        inter = measure_interference(ctx, models[0], grid, bar)
        inter_ar = measure_interference(ctx, models[0], grid, bar, "all_reduce")
        host = _measure_host(ctx, models, host_steps, bar) if host_steps > 0 else HostRows()
        if ctx.rank == 0:
            meta = dict(_meta(ctx, args, grid, models), interference=inter,
                        interference_all_reduce=inter_ar, count_exchange_us=exchange_us, comm_spread_pct=comm_spread,
                        comm_pass_us=comm_pass_us)
            prof = _fit(ctx, args, meta, models, compute, comm, inter, inter_ar, host, t_start, ops_tables, dep_rows)
            prof.save(args.out)
            bar.close()
            rep = prof.meta["replay"]
            print(f"wrote {args.out} in {prof.meta['duration_s']} s; replay error mean {rep['mean_err_pct']} %, "
                  f"max {rep['max_err_pct']} % ({rep['worst']})", file=sys.stderr)
        ctx.barrier()
    finally:
        dist.destroy_process_group()
    return 0
