"""The profiler's measurements: compute task kinds over token counts, collectives over
message sizes per scope, the routing-count exchange, and interference of the two.

Medians of ``reps`` runs after warm-up (:mod:`executor.profiling.timing`); every rank runs
every function, and each returns the rows of all ranks. x = FLOPs of a task
(:mod:`moesched.work`), bytes of a rank's buffer for a collective.
"""
from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from executor.profiling.bench import shape_bench
from executor.profiling.context import Ctx, collective
from executor.profiling.timing import loop, time_isolated_us, time_us, together
from moesched.kinds import ALL_COMPUTE_KINDS as COMPUTE_KINDS
from moesched.models import MoEModel

warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated")

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
    comm_passes: int = 3


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


def measure_compute(ctx: Ctx, models: list[MoEModel], grid: Grid, bar: Any) -> list[tuple]:
    """(model, kind, tokens, flops, us, role) rows; role is "fit", "tiny" or "replay". Ranks
    split the items and share the results."""
    items = [(m.name, k, t, "fit") for m in models for k in COMPUTE_KINDS for t in grid.tokens]
    items += [(models[0].name, k, grid.tiny_tokens, "tiny") for k in COMPUTE_KINDS]
    items += [(m.name, k, t, "replay") for m in models for k in COMPUTE_KINDS for t in grid.replay_tokens]
    by_name = {m.name: m for m in models}
    rows = []
    for name, kind, tokens, role in items[ctx.rank::ctx.world]:
        fn, flops = shape_bench(by_name[name], kind, tokens, ctx.device, ctx.world)
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


# Latency-bound collectives jitter by 20-50 % run to run (NVLink): up to
# SMALL_BYTES they get SMALL_REPS times the grid's reps for their median (cheap: ~0.1 ms each).
SMALL_BYTES, SMALL_REPS = 16 * MB, 3
# Every collective is timed in ``Grid.comm_passes`` passes over the whole grid (3 unless
# ``--comm-passes``), its reps split between them: a slow spell of the links (host-memory
# and socket transports have them) then hits a few reps of many sizes rather than all reps
# of one size, and the passes' medians show how repeatable each point is
# (``meta.comm_pass_us``, ``meta.comm_spread_pct``).


def measure_comm(ctx: Ctx, grid: Grid, bar: Any) -> tuple[list[tuple], dict[str, float], dict[str, list[float]]]:
    """(op, scope, bytes, us, role) rows, each collective timed alone
    (:func:`time_isolated_us`): per rep the smallest time over ranks, then the median over
    reps (``SMALL_REPS`` times the grid's reps up to ``SMALL_BYTES``), the reps spread over
    ``grid.comm_passes`` passes. The smallest is the rank that joined last, which did not
    wait for the others: the collective's own duration once every rank is in, which is what
    the simulator charges (the host model and the dependencies decide when every rank is in).
    Also, keyed "op.scope@bytes": the range of the passes' medians over the median, %, and
    each pass's median, µs."""
    items = [(op, scope, nbytes, role) for scope in sorted(ctx.scopes) for op in OPS
             for nbytes, role in [(s, "fit") for s in grid.sizes] + [(s, "replay") for s in grid.replay_sizes]]
    passes = grid.comm_passes
    times: list[list[float]] = [[] for _ in items]
    for rnd in range(passes):
        for i, (op, scope, nbytes, _) in enumerate(items):
            reps = math.ceil(grid.reps * (SMALL_REPS if nbytes <= SMALL_BYTES else 1) / passes)
            times[i] += time_isolated_us(ctx, collective(ctx, op, scope, nbytes, async_op=True), reps,
                                         grid.warmup if rnd == 0 else 1)
            bar.update(1)
    every = ctx.gather(times)
    rows, spread, pass_us = [], {}, {}
    for i, (op, scope, nbytes, role) in enumerate(items):
        last = [min(ts[i][k] for ts in every) for k in range(len(times[i]))]  # per rep: the last rank in
        per = len(last) // passes
        meds = [statistics.median(last[r * per:(r + 1) * per]) for r in range(passes)]
        med = statistics.median(last)
        rows.append((op, scope, nbytes, med, role))
        key = f"{op}.{scope}@{nbytes}"
        spread[key] = round(100.0 * (max(meds) - min(meds)) / med, 2) if med > 0 else 0.0
        pass_us[key] = [round(m, 3) for m in meds]
    return rows, spread, pass_us


def measure_interference(ctx: Ctx, model: MoEModel, grid: Grid, bar: Any, op: str = "all_to_all") -> dict[str, float]:
    """compute_slowdown = compute time with collective ``op`` (all_to_all or all_reduce)
    looping on another stream / alone; comm_slowdown = the collective's time with compute
    running / alone (each >= 1.0). The two differ by collective: an all-reduce reduces on
    the SMs that the GEMMs use."""
    comp, _ = shape_bench(model, "expert_fwd", grid.interference_tokens, ctx.device, ctx.world)
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
