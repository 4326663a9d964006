"""Measure a profile on the target devices: ``torchrun --nproc_per_node=N -m moesched profile``.

Times (a) every compute task kind through ``executor.tasks.make_bench`` (the functions the
runtime calls) over a grid of token counts per model shape, x = FLOPs from
:mod:`moesched.work`; (b) the collectives the executor uses (all-to-all with even and
uneven splits, all-reduce, all-gather, reduce-scatter) over message sizes on each group
scope (intra, inter, world); (c) interference of compute and a collective running at the
same time; (d) the per-task overhead at a tiny size; (e) a replay check on points held
out of the fit. Medians of ``reps`` runs after warm-up: CUDA events on GPU (a barrier
before each collective), ``perf_counter`` on CPU. Rank 0 fits (:mod:`moesched.fit`) and
writes the profile atomically at the very end, so a failed run leaves the old file intact.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.distributed as dist

warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated")

from executor.comm import a2a, link_pg_options
from executor.timing import loop, time_isolated_us, time_us, together
from moesched import work
from moesched.configs import models_from_spec
from moesched.errors import MoeschedError
from moesched.cluster import Cluster
from moesched.calibrate import with_host
from moesched.fit import profile_from_samples
from moesched.models import MoEModel
from moesched.profile import ALL_COMPUTE_KINDS as COMPUTE_KINDS

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
GPU_MODELS = ("Mixtral-8x7B", "DeepSeek-V2-Lite", "GPT2-XL-MoE")
CPU_MODELS = ("GPT2-Tiny-MoE",)
OPS = ("all_to_all", "all_to_all_uneven", "all_reduce", "all_gather", "reduce_scatter")
KB, MB = 2**10, 2**20


@dataclass(frozen=True)
class Grid:
    """What to measure: token counts (fit), held-out token counts (replay), a tiny token
    count (overhead), message sizes in bytes (fit and replay), repetitions."""

    tokens: tuple[int, ...]
    replay_tokens: tuple[int, ...]
    tiny_tokens: int
    sizes: tuple[int, ...]
    replay_sizes: tuple[int, ...]
    reps: int
    warmup: int
    interference_bytes: int
    interference_tokens: int


def make_grid(cuda: bool, quick: bool) -> Grid:
    """GPU: 256..32768 tokens (x2 steps; quick x4) and 64 KB..512 MB (x2; quick x4), 7 timed
    runs after 2 warm-ups. CPU/gloo: small grids, 5 timed runs after 1 warm-up."""
    if cuda:
        step = 2 if quick else 1
        tokens = tuple(256 * 2**i for i in range(0, 8, step))
        sizes = tuple(64 * KB * 2**i for i in range(0, 14, step))
        return Grid(tokens, (384, 3072, 24576), 16, sizes, (96 * KB, 12 * MB, 192 * MB), 7, 2, 64 * MB, 8192)
    if quick:
        return Grid((32, 128, 512), (256,), 8, (4 * KB, 32 * KB, 256 * KB, 1 * MB), (128 * KB,), 5, 1, 1 * MB, 512)
    return Grid((32, 64, 128, 256, 512, 1024), (96, 768), 8, tuple(4 * KB * 2**i for i in range(0, 11, 2)),
                (24 * KB, 1536 * KB), 5, 1, 4 * MB, 1024)


def bench_shape(m: MoEModel, kind: str, tokens: int) -> MoEModel:
    """Shape for ``tokens`` tokens of whole samples: seq_len min(L, tokens), halved until it
    divides tokens; shared kinds of a model without shared experts time one."""
    seq = min(m.seq_len, tokens)
    while tokens % seq:
        seq //= 2
    shared = max(1, m.shared_experts) if kind.startswith("shared") else m.shared_experts
    return replace(m, seq_len=seq, micro_batch=tokens // seq, shared_experts=shared)


def task_flops(kind: str, m: MoEModel, tokens: int) -> float:
    """Work of one task as :mod:`moesched.graph` charges it: FLOPs (loss: elements)."""
    f = {"attn_fwd": work.attn_fwd_flops, "attn_bwd": work.attn_bwd_flops, "expert_fwd": work.expert_fwd_flops,
         "expert_dx": work.expert_fwd_flops, "expert_dw": work.expert_fwd_flops,
         "shared_fwd": work.shared_fwd_flops, "loss": work.loss_elements}
    return 2 * work.shared_fwd_flops(m, tokens) if kind == "shared_bwd" else f[kind](m, tokens)


class Ctx:
    """The process group state: ranks, device, emulated layout, groups per scope."""

    def __init__(self, emulate_nodes: int | None) -> None:
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        self.nodes = emulate_nodes or max(1, self.world // local_world)
        if self.world % self.nodes:
            raise MoeschedError(f"--emulate-nodes {self.nodes} does not divide world size {self.world}")
        self.gpn = self.world // self.nodes
        if emulate_nodes:
            os.environ["NCCL_HOSTID"] = f"node{self.rank // self.gpn}"
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
            dist.init_process_group("nccl", device_id=self.device)
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
            dist.init_process_group("gloo")
        node = self.rank // self.gpn
        # The executor's link groups: own NCCL communicators with a high-priority stream
        # (executor.comm), so the profile times the very collectives the runtime issues.
        be = "nccl" if self.cuda else "gloo"

        def group(ranks: list[int]) -> Any:
            return dist.new_group(ranks, backend=be, pg_options=link_pg_options(be, "comm"))
        intra = [group(list(range(n * self.gpn, (n + 1) * self.gpn))) for n in range(self.nodes)]
        inter = [group([n * self.gpn + l for n in range(self.nodes)]) for l in range(self.gpn)]
        world = group(list(range(self.world)))
        if self.nodes == 1:
            self.scopes = {"intra": (world, self.world)}
        else:
            self.scopes = {"inter": (inter[self.rank % self.gpn], self.nodes), "world": (world, self.world)}
            if self.gpn > 1:
                self.scopes["intra"] = (intra[node], self.gpn)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def barrier(self) -> None:
        self.sync()
        dist.barrier()
        self.sync()

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def collective(ctx: Ctx, op: str, scope: str, nbytes: int, async_op: bool = False) -> Callable[[], Any]:
    """A closure running one collective of ``nbytes`` bytes per rank on the scope's group.
    x = bytes of each rank's buffer: the all-to-all send buffer, the all-reduce tensor, the
    gathered output of all-gather, the input of reduce-scatter."""
    group, p = ctx.scopes[scope]
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    me = dist.get_rank(group=group)
    weights = [1 + (me + j) % p for j in range(p)]  # uneven: i->j sends as many as j->i
    unit = max(1, nbytes // (dtype.itemsize * p * sum(weights)))
    n = unit * p * sum(weights)
    buf = torch.ones(n, dtype=dtype, device=ctx.device)
    out = torch.empty_like(buf)
    part = torch.empty(n // p, dtype=dtype, device=ctx.device)
    kw: dict[str, Any] = {"group": group, "async_op": async_op}
    if op in ("all_to_all", "all_to_all_uneven"):
        # the runtime's own call: executor.comm.a2a (split lists, a fresh receive buffer)
        splits = [n // p] * p if op == "all_to_all" else [w * unit * p for w in weights]
        if async_op:
            return lambda: a2a(buf, splits, splits, group, None)[1]
        return lambda: dist.all_to_all_single(out, buf, splits, splits, **kw)
    if op == "all_reduce":
        return lambda: dist.all_reduce(buf, **kw)
    if op == "all_gather":
        return lambda: dist.all_gather_into_tensor(out, part, **kw)
    if op == "reduce_scatter":
        return lambda: dist.reduce_scatter_tensor(part, buf, **kw)
    raise ValueError(op)


def _bench(model: MoEModel, kind: str, tokens: int, ctx: Ctx) -> tuple[Callable[[], None], float]:
    try:
        from executor.tasks import make_bench
    except ImportError as e:
        raise MoeschedError(f"compute kinds cannot be timed: executor.tasks.make_bench is missing ({e})") from None
    m = bench_shape(model, kind, tokens)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[m.dtype] if ctx.cuda \
        else torch.float32
    ep = ctx.world if m.experts % ctx.world == 0 else 1  # expert GEMM sizes as with EP = world
    return make_bench(kind, m, tokens, ctx.device, dtype, ep=ep), task_flops(kind, m, tokens)


def measure_compute(ctx: Ctx, models: list[MoEModel], grid: Grid, bar: Any) -> list[tuple]:
    """(model, kind, tokens, flops, us, role) rows; role is "fit", "tiny" or "replay". Ranks
    split the items and share the results."""
    items = [(m.name, k, t, "fit") for m in models for k in COMPUTE_KINDS for t in grid.tokens]
    items += [(models[0].name, k, grid.tiny_tokens, "tiny") for k in COMPUTE_KINDS]
    items += [(m.name, k, t, "replay") for m in models for k in COMPUTE_KINDS for t in grid.replay_tokens]
    by_name = {m.name: m for m in models}
    rows = []
    for name, kind, tokens, role in items[ctx.rank::ctx.world]:
        fn, flops = _bench(by_name[name], kind, tokens, ctx)
        rows.append((name, kind, tokens, flops, time_us(ctx, fn, grid.reps, grid.warmup), role))
        del fn
        bar.update(1)
    return [r for part in ctx.gather(rows) for r in part]


def measure_count_exchange(ctx: Ctx, grid: Grid) -> float:
    """µs of attn_fwd's routing-count exchange, which its benchmark closure leaves out: a
    small all-gather over the EP group (the world here) and the copy of the counts to the
    host (executor.tasks.attn_fwd). The profile adds it to every attn_fwd sample."""
    cnt = torch.ones(256, dtype=torch.long, device=ctx.device)
    out = torch.empty(256 * ctx.world, dtype=torch.long, device=ctx.device)
    parts = [torch.empty_like(cnt) for _ in range(ctx.world)]

    def exchange() -> None:
        if ctx.cuda:
            dist.all_gather_into_tensor(out, cnt)
            out.cpu()
        else:
            dist.all_gather(parts, cnt)

    ctx.barrier()
    for _ in range(grid.warmup + 2):
        exchange()
    times = []
    for _ in range(grid.reps):
        t0 = time.perf_counter()
        exchange()
        times.append(1e6 * (time.perf_counter() - t0))
    return max(ctx.gather(statistics.median(times)))


# Latency-bound collectives jitter by 20-50 % run to run (session 5, NVLink): up to
# SMALL_BYTES they get SMALL_REPS times the grid's reps for their median (cheap: ~0.1 ms each).
SMALL_BYTES, SMALL_REPS = 16 * MB, 3
# Every collective is timed in ROUNDS passes over the whole grid, its reps split between
# them: a slow spell of the links (host-memory and socket transports have them, session 6)
# then hits a few reps of many sizes rather than all reps of one size, and the passes'
# medians show how repeatable each point is (``meta.comm_spread_pct``).
ROUNDS = 3


def measure_comm(ctx: Ctx, grid: Grid, bar: Any) -> tuple[list[tuple], dict[str, float]]:
    """(op, scope, bytes, us, role) rows, each collective timed alone
    (:func:`time_isolated_us`): per rep the smallest time over ranks, then the median over
    reps (``SMALL_REPS`` times the grid's reps up to ``SMALL_BYTES``), the reps spread over
    ``ROUNDS`` passes. The smallest is the rank that joined last, which did not wait for
    the others: the collective's own duration once every rank is in, which is what the
    simulator charges (the host model and the dependencies decide when every rank is in).
    Also {"op.scope@bytes": spread %}: range of the passes' medians over the median."""
    items = [(op, scope, nbytes, role) for scope in sorted(ctx.scopes) for op in OPS
             for nbytes, role in [(s, "fit") for s in grid.sizes] + [(s, "replay") for s in grid.replay_sizes]]
    times: list[list[float]] = [[] for _ in items]
    for rnd in range(ROUNDS):
        for i, (op, scope, nbytes, _) in enumerate(items):
            reps = math.ceil(grid.reps * (SMALL_REPS if nbytes <= SMALL_BYTES else 1) / ROUNDS)
            times[i] += time_isolated_us(ctx, collective(ctx, op, scope, nbytes, async_op=True), reps,
                                         grid.warmup if rnd == 0 else 1)
            bar.update(1)
    every = ctx.gather(times)
    rows, spread = [], {}
    for i, (op, scope, nbytes, role) in enumerate(items):
        last = [min(ts[i][k] for ts in every) for k in range(len(times[i]))]  # per rep: the last rank in
        per = len(last) // ROUNDS
        meds = [statistics.median(last[r * per:(r + 1) * per]) for r in range(ROUNDS)]
        med = statistics.median(last)
        rows.append((op, scope, nbytes, med, role))
        spread[f"{op}.{scope}@{nbytes}"] = round(100.0 * (max(meds) - min(meds)) / med, 2) if med > 0 else 0.0
    return rows, spread


def measure_interference(ctx: Ctx, model: MoEModel, grid: Grid, bar: Any, op: str = "all_to_all") -> dict[str, float]:
    """compute_slowdown = compute time with collective ``op`` (all_to_all or all_reduce)
    looping on another stream / alone; comm_slowdown = the collective's time with compute
    running / alone (each >= 1.0). The two differ by collective: an all-reduce reduces on
    the SMs that the GEMMs use."""
    comp, _ = _bench(model, "expert_fwd", grid.interference_tokens, ctx)
    scope = "world" if "world" in ctx.scopes else "intra"
    comm_sync = collective(ctx, op, scope, grid.interference_bytes)
    comm = collective(ctx, op, scope, grid.interference_bytes, async_op=True)
    t_comp = time_us(ctx, comp, grid.reps, grid.warmup)
    t_comm = time_us(ctx, comm_sync, grid.reps, grid.warmup, barrier=True)
    box = [(t_comp, t_comm)]
    dist.broadcast_object_list(box, src=0)  # rank 0's times: the same loop counts on every rank
    t_comp, t_comm = box[0]
    loop_us = 20000.0 if ctx.cuda else 50000.0
    n_c = min(500, max(5, math.ceil(loop_us / t_comp)))
    n_m = min(500, max(2, math.ceil(1.3 * n_c * t_comp / t_comm)))
    alone_c = time_us(ctx, loop(comp, n_c), 3, 1)
    with_comm = together(ctx, comp, n_c, comm, n_m, "compute")
    n_m2 = min(500, max(3, math.ceil(loop_us / t_comm)))
    n_c2 = min(2000, max(2, math.ceil(1.3 * n_m2 * t_comm / t_comp)))
    alone_m = time_us(ctx, lambda: [w.wait() for w in [comm() for _ in range(n_m2)]], 3, 1, barrier=True)
    with_comp = together(ctx, comp, n_c2, comm, n_m2, "comm")
    bar.update(1)
    r = [max(ts) for ts in zip(*ctx.gather([alone_c, with_comm, alone_m, with_comp]))]
    return {"compute_alone_us": r[0], "compute_with_comm_us": r[1], "comm_alone_us": r[2], "comm_with_compute_us": r[3],
            "compute_loop": n_c, "comm_loop": n_m2, "bytes": grid.interference_bytes, "scope": scope, "op": op,
            "tokens": grid.interference_tokens, "compute_slowdown": max(1.0, r[1] / r[0]),
            "comm_slowdown": max(1.0, r[3] / r[2])}


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


def _meta(ctx: Ctx, args: argparse.Namespace, grid: Grid, names: list[str]) -> dict[str, Any]:
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_") or k in SAFE_ENV}
    cmd = " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items() if k not in ("NCCL_HOSTID", "NCCL_VERSION")] +
                   [f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', ctx.world)} -m moesched"] +
                   [shlex.quote(a) for a in sys.argv[1:]])
    return {"command": cmd, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **_versions(ctx), "world_size": ctx.world, "nodes": ctx.nodes, "gpus_per_node": ctx.gpn,
            "emulated_nodes": bool(args.emulate_nodes), "env": env, "models": names,
            "bench": "executor.tasks.make_bench, ep = world size where it divides experts, else 1",
            "grid": {"tokens": list(grid.tokens), "replay_tokens": list(grid.replay_tokens),
                     "tiny_tokens": grid.tiny_tokens, "sizes_bytes": list(grid.sizes),
                     "replay_sizes_bytes": list(grid.replay_sizes), "reps": grid.reps, "warmup": grid.warmup},
            "x": {"compute": "FLOPs (moesched.work)", "comm": "bytes of each rank's buffer: all-to-all send "
                  "buffer, all-reduce tensor, all-gather output, reduce-scatter input"}}


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
    names = [m.name for m in models]
    grid = make_grid(cuda, args.quick)
    ctx = Ctx(args.emulate_nodes)
    try:
        from tqdm import tqdm
        n_comp = len(models) * len(COMPUTE_KINDS) * (len(grid.tokens) + len(grid.replay_tokens)) + len(COMPUTE_KINDS)
        n_comm = len(ctx.scopes) * len(OPS) * (len(grid.sizes) + len(grid.replay_sizes)) * ROUNDS
        if ctx.rank == 0:
            print(f"profiling: {n_comp} compute timings ({math.ceil(n_comp / ctx.world)} per rank), "
                  f"{n_comm // ROUNDS} collective timings on scopes {sorted(ctx.scopes)} in {ROUNDS} passes, "
                  f"x{grid.reps} runs each", file=sys.stderr)
        from executor import hostprof
        host_steps = args.host_steps if args.host_steps is not None else (3 if cuda else 0)
        n_host = sum(len(hostprof.VARIANTS) + (m.layers > 1) for m in models) if host_steps > 0 else 0  # executor.hostprof
        bar = tqdm(total=math.ceil(n_comp / ctx.world) + n_comm + 2 + n_host, disable=ctx.rank != 0, file=sys.stderr,
                   desc="profile", unit="pt")
        compute = measure_compute(ctx, models, grid, bar)
        comm, comm_spread = measure_comm(ctx, grid, bar)
        exchange_us = measure_count_exchange(ctx, grid)
        compute = [(n, k, t, x, us + exchange_us if k == "attn_fwd" else us, role) for n, k, t, x, us, role in compute]
        inter = measure_interference(ctx, models[0], grid, bar)
        inter_ar = measure_interference(ctx, models[0], grid, bar, "all_reduce")
        host_rows: list = []
        lags: list = []
        a2a_rows: list = []
        comp_rows: list = []
        probe: list = []
        if host_steps > 0:  # the host issue cost of every task kind, from real executor steps
            from executor.timing import host_probe_us
            probe = ctx.gather(host_probe_us(ctx.device))  # the host's speed now (validate scales by it)
            dtype = torch.bfloat16 if cuda else torch.float32
            mine, my_lags, my_a2a, my_comp = hostprof.measure_host(
                models, Cluster(ctx.nodes, ctx.gpn), ctx.rank, ctx.device, dtype, steps=host_steps,
                tick=lambda: bar.update(1))
            host_rows = [r for rs in ctx.gather(mine) for r in rs]
            lags = [x for ls in ctx.gather(my_lags) for x in ls]
            a2a_rows = hostprof.a2a_samples(ctx.gather(my_a2a))
            comp_rows = [r for rs in ctx.gather(my_comp) for r in rs]
        if ctx.rank == 0:
            meta = dict(_meta(ctx, args, grid, names), interference=inter, interference_all_reduce=inter_ar,
                        count_exchange_us=exchange_us,
                        comm_spread_pct=comm_spread)
            if probe:
                meta["host_probe_us"] = max(probe)  # the slowest rank's host sets a collective's start
            mem = torch.cuda.get_device_properties(ctx.device).total_memory if cuda \
                else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            hw = {"gpu": meta.get("gpu") or f"CPU ({platform.machine()})", "nodes": ctx.nodes, "gpus_per_node": ctx.gpn,
                  "gpu_memory_bytes": int(mem), "regime": args.regime or _regime(ctx.nodes, bool(args.emulate_nodes))}
            name = args.name or os.path.splitext(os.path.basename(args.out))[0]
            desc = f"measured: {ctx.world} x {hw['gpu']} as {ctx.nodes} node(s) x {ctx.gpn}, {hw['regime']}"
            prof = profile_from_samples(name, desc, hw, meta, compute, comm, inter["compute_slowdown"],
                                        inter["comm_slowdown"], duration_s=time.time() - t_start,
                                        shape_of={m.name: m.shape_key() for m in models})
            prof = replace(prof, interference_by_op={
                "all_reduce": (inter_ar["compute_slowdown"], inter_ar["comm_slowdown"])})
            if host_rows:
                prof = with_host(prof, host_rows, hostprof.lag_us(lags), a2a_rows, comp_rows)
                print(f"host issue µs (median per kind): {hostprof.summary(host_rows)}, lag "
                      f"{prof.host.lag_us} µs", file=sys.stderr)
                print(f"in-situ compute factors: {prof.meta.get('insitu_compute')}", file=sys.stderr)
            prof.save(args.out)
            bar.close()
            rep = prof.meta["replay"]
            print(f"wrote {args.out} in {prof.meta['duration_s']} s; replay error mean {rep['mean_err_pct']} %, "
                  f"max {rep['max_err_pct']} % ({rep['worst']})", file=sys.stderr)
        ctx.barrier()
    finally:
        dist.destroy_process_group()
    return 0
