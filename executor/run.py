"""``torchrun --nproc_per_node=N -m executor.run --plan plan.json [--steps 50] [--warmup 5]
[--trace out.json] [--emulate-nodes K] [--backend auto|nccl|gloo] [--seed 0] [--timeout 120]``

Runs the plan's training step on synthetic data, prints the median step time (ms) and the
throughput (tokens/s over all ranks) on rank 0, and writes the measured Chrome trace (all
ranks gathered) with ``--trace``.

Safety before the first collective of the step: every rank loads the plan on its own, then
all ranks all-gather (gloo, small tensors) a status code, the plan hash, the world size the
plan expects and any load error text. If one rank failed or ranks disagree, EVERY rank
prints the same line ``executor: error: ...`` and exits with status 2. The process group
has a bounded timeout (``--timeout`` s), so a dead peer cannot hang the others forever.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
MSG_BYTES = 400
OK, LOAD_FAILED = 0, 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m executor.run",
                                 description="Run a moesched plan under torchrun and measure it.")
    ap.add_argument("--plan", required=True, help="plan JSON written by moesched solve")
    ap.add_argument("--steps", type=int, default=50, help="timed steps (default 50)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    ap.add_argument("--trace", help="write the measured Chrome trace (all ranks, last step) here")
    ap.add_argument("--emulate-nodes", type=int, default=None, metavar="K",
                    help="pose as K nodes on one host (sets NCCL_HOSTID per rank group)")
    ap.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto")
    ap.add_argument("--issue", choices=("single", "threads"), default="single",
                    help="launch every task from one host thread (default) or collectives from their own")
    ap.add_argument("--seed", type=int, default=0, help="parameter and data seed")
    ap.add_argument("--timeout", type=float, default=120.0, help="collective timeout in seconds")
    return ap.parse_args(argv)


def _fail(msg: str) -> int:
    print(f"executor: error: {msg}", flush=True)
    return 2


def _encode(text: str) -> list[int]:
    b = text.encode()[:MSG_BYTES]
    return list(b) + [0] * (MSG_BYTES - len(b))


def _decode(vals: list[int]) -> str:
    return bytes(v for v in vals if v).decode(errors="replace")


def agree(plan_or_error: object, world: int, emulate: int | None) -> str | None:
    """All-gather each rank's plan status over the default group (CPU tensors); return the
    same error text on every rank, or None when all ranks hold the same valid plan."""
    import torch
    import torch.distributed as dist

    from moesched.plan import Plan
    if isinstance(plan_or_error, Plan):
        p = plan_or_error
        code, text = OK, ""
        h = [int(p.hash[i:i + 8], 16) for i in range(0, 64, 8)]
        shape = [p.cluster.world, p.cluster.nodes, p.cluster.gpus_per_node]
    else:
        code, text, h, shape = LOAD_FAILED, str(plan_or_error), [0] * 8, [0, 0, 0]
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "0"))
    mine = torch.tensor([code] + h + shape + [local] + _encode(text), dtype=torch.long)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    rows = [t.tolist() for t in parts]
    for r, row in enumerate(rows):
        if row[0] != OK:
            return f"rank {r} could not load its plan: {_decode(row[13:])}"
    hashes = [tuple(row[1:9]) for row in rows]
    if len(set(hashes)) > 1:
        diff = next(r for r in range(world) if hashes[r] != hashes[0])
        return f"ranks hold different plans (rank 0 and rank {diff} differ in plan hash)"
    pw, nodes, gpn, _ = rows[0][9:13]
    if pw != world:
        return f"the plan is for {pw} ranks ({nodes}x{gpn}) but {world} ranks are running"
    if emulate is not None and emulate != nodes:
        return f"--emulate-nodes {emulate} but the plan's cluster has {nodes} nodes"
    locals_ = {row[12] for row in rows}
    if emulate is None and nodes > 1 and locals_ != {0} and locals_ != {gpn}:
        return f"the plan's cluster has {gpn} ranks per node but torchrun runs {sorted(locals_)} per node"
    return None


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    for k, v in SAFE_ENV.items():
        os.environ.setdefault(k, v)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if a.emulate_nodes is not None:
        if a.emulate_nodes <= 0 or world % a.emulate_nodes:
            return _fail(f"--emulate-nodes {a.emulate_nodes} does not divide the {world} ranks")
        os.environ["NCCL_HOSTID"] = f"node{rank // (world // a.emulate_nodes)}"
    import torch
    import torch.distributed as dist

    from moesched.errors import MoeschedError
    from moesched.plan import Plan

    cuda = torch.cuda.is_available() if a.backend == "auto" else a.backend == "nccl"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    try:
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=a.timeout))
    except Exception as e:  # a peer that never arrives: bounded by --timeout
        return _fail(f"rank {rank} could not join the {world} ranks within {a.timeout:g} s "
                     f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    try:
        try:
            plan: object = Plan.load(a.plan)
        except (MoeschedError, OSError, ValueError) as e:
            plan = e
        try:
            err = agree(plan, world, a.emulate_nodes)
        except RuntimeError as e:  # a peer died before the check: bounded by --timeout
            return _fail(f"rank {rank}: the plan check across ranks failed ({str(e).splitlines()[0]})")
        if err is not None:
            return _fail(err)
        return _run(a, plan, rank, world, cuda)
    except MoeschedError as e:
        return _fail(str(e))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(a: argparse.Namespace, plan, rank: int, world: int, cuda: bool) -> int:
    import pandas as pd
    import torch
    import torch.distributed as dist

    from executor.layers import TORCH_DTYPES, MoEModule, make_batch
    from executor.runtime import PlannedStep
    from moesched.sim import Timeline

    m = plan.model
    dev = torch.device("cuda") if cuda else torch.device("cpu")
    dtype = TORCH_DTYPES[m.dtype] if cuda else torch.float32
    ep = plan.cluster.ep_size
    module = MoEModule(m, ep=ep, ep_rank=rank % ep, seed=a.seed, device=dev, dtype=dtype)
    step = PlannedStep(module, plan, timeout_s=a.timeout, issue=a.issue)
    x, t = make_batch(m, rank, a.seed, device=dev, dtype=dtype)
    times = []
    for i in range(a.warmup + a.steps):
        dist.barrier(group=step.groups.world_meta)
        t0 = time.perf_counter()
        loss = step(x, t)
        if cuda:
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times) if times else float("nan")
    if rank == 0:
        tok = world * m.tokens / med if times else float("nan")
        print(f"executor: {plan.policy} {m.name} {plan.cluster.label()}: median step {med * 1e3:.3f} ms, "
              f"{tok:,.0f} tokens/s, loss {loss:.6f} ({a.steps} steps after {a.warmup} warm-up)", flush=True)
    if a.trace:
        tl = step.timeline()
        dfs = [None] * world
        dist.all_gather_object(dfs, (tl.df, tl.host), group=step.groups.world_meta)
        if rank == 0:
            from moesched.trace import write_chrome_trace
            meta = dict(tl.meta, ranks=world, median_step_us=med * 1e6, policy=plan.policy, plan_hash=plan.hash)
            write_chrome_trace(Timeline(pd.concat([d for d, _ in dfs], ignore_index=True), meta,
                                        host=pd.concat([h for _, h in dfs], ignore_index=True)),
                               a.trace, label="measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
