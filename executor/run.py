"""``torchrun --nproc_per_node=N -m executor.run --plan plan.json [--steps 50] [--warmup 5]
[--trace out.json] [--emulate-nodes K] [--backend auto|nccl|gloo] [--seed 0] [--timeout 120]
[--heartbeat-timeout 30] [--record-routing FILE] [--placements SCHEDULE]``

Runs the plan's training step on synthetic data, prints the median step time (ms) and the
throughput (tokens/s over all ranks) on rank 0, and writes the measured Chrome trace (all
ranks gathered) with ``--trace``, and the routing of every step (warm-up included) as a
routing trace with ``--record-routing`` (:mod:`executor.routing_record`; docs/formats.md).

``--placements SCHEDULE`` (a placement schedule, ``moesched placement --schedule-out``)
trains the plan's model, unchunked (rank 0 first names the plan's knobs that are so left
out: pipeline degree, gradient chunks, hierarchical all-to-all), with its experts placed and moved as the schedule says
(:mod:`executor.placerun`: :class:`executor.placement.PlacedMoE`, the unchunked
:class:`executor.placement_step.PlacedStep` and Adam) instead of the planned step. Steps
count from 0 with the warm-up: 0..W-1 are the ``--warmup`` steps, W..W+N-1 the timed ones,
and the schedule's change at step s >= 1 is applied before step s (parameters and Adam state
moved, ``apply_placement``). Rank 0 prints a second line: the changes applied of the
schedule's (a change at step W+N or later is never applied and is listed), the experts
moved (replicas copied) and each change's time (ms, the slowest rank's; the step times
leave the changes and the Adam update out). Refused on every rank before any step: a
schedule that is missing or malformed, for another number of ranks, or for other experts
or layers than the plan's model; a layout plan, a plan with expert data parallelism, and a model with dense layers, expert-choice routing, auxiliary router
losses or deepseek_v3 bias updates; ``--trace``, ``--record-routing`` and ``--issue threads``
with ``--placements`` are refused with the other flags.

Errors. Every failure ends in ONE line ``moesched: error: ...`` on stderr and exit status 2
on every rank, never a traceback (:mod:`executor.errors`):

- flags are checked before anything starts (counts and seconds positive and finite, a
  ``--backend nccl`` that this build of torch can run, a ``--trace`` path that can be
  written and is not the plan);
- before the first collective of the step, every rank loads the plan (and the
  ``--placements`` schedule) on its own, then all ranks all-gather (gloo, small tensors) a
  status code, the plan hash, the world size the plan expects and any error text. If one
  rank failed or ranks disagree, EVERY rank prints the same line and exits with status 2;
- a rank that never arrives at the rendezvous stops the others after about twice
  ``--timeout`` (torch tries to connect twice);
- while the ranks run, the watchdog (:mod:`executor.watchdog`) ends every rank within
  ``--heartbeat-timeout`` + 2 s of a peer that died, stopped or failed, with the line
  ``rank R stopped responding (no heartbeat for S s)`` or ``rank R failed: ...``; a
  collective that fails because a peer is gone ends its rank with one line too. Collectives
  themselves time out after ``--timeout`` s.

torchrun prints its own traceback (``ChildFailedError``) whenever a worker exits non-zero;
``python -m executor.launch`` runs the same workers and reports one line instead.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from executor import errors
from executor.watchdog import DEFAULT_TIMEOUT_S, Watchdog
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.fileio import check_outputs

if TYPE_CHECKING:
    from moesched.placement_schedule import PlacementSchedule
    from moesched.plan import Plan

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
MSG_BYTES = 400
OK, LOAD_FAILED, REFUSED = 0, 1, 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = errors.ArgParser(prog="python -m executor.run",
                          description="Run a moesched plan under torchrun and measure it.")
    ap.add_argument("--plan", required=True, help="plan JSON written by moesched solve")
    ap.add_argument("--steps", type=int, default=50, help="timed steps, at least 1 (default 50)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first, at least 0 (default 5)")
    ap.add_argument("--trace", help="write the measured Chrome trace (all ranks, last step) here")
    ap.add_argument("--record-routing", metavar="FILE",
                    help="write every step's routing (copies per EP rank and expert) here as a routing trace")
    ap.add_argument("--placements", metavar="SCHEDULE",
                    help="train with experts placed and moved as this placement schedule says "
                         "(moesched placement --schedule-out; the unchunked step, Adam)")
    ap.add_argument("--emulate-nodes", type=int, default=None, metavar="K",
                    help="pose as K nodes on one host (sets NCCL_HOSTID per rank group)")
    ap.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto")
    ap.add_argument("--issue", choices=("single", "threads"), default="single",
                    help="launch every task from one host thread (default) or collectives from their own")
    ap.add_argument("--seed", type=int, default=0, help="parameter and data seed, 0 to 2**63-1")
    ap.add_argument("--timeout", type=float, default=120.0, help="collective timeout in seconds (default 120)")
    ap.add_argument("--heartbeat-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                    help=f"end every rank when a peer gave no heartbeat for this many seconds "
                         f"(default {DEFAULT_TIMEOUT_S:g})")
    return ap.parse_args(argv)


def check_args(a: argparse.Namespace) -> None:
    """Refuse bad flag values before anything starts (MoeschedError, one line)."""
    if a.steps < 1:
        raise MoeschedError(f"--steps must be at least 1, got {a.steps}")
    if a.warmup < 0:
        raise MoeschedError(f"--warmup must be at least 0, got {a.warmup}")
    for flag, v in (("--timeout", a.timeout), ("--heartbeat-timeout", a.heartbeat_timeout)):
        if not (math.isfinite(v) and v > 0):
            raise MoeschedError(f"{flag} must be a positive, finite number of seconds, got {v:g}")
    if not 0 <= a.seed < 2 ** 63:
        raise MoeschedError(f"--seed must be in 0..2**63-1, got {a.seed}")
    if a.emulate_nodes is not None and a.emulate_nodes < 1:
        raise MoeschedError(f"--emulate-nodes must be at least 1, got {a.emulate_nodes}")
    if a.record_routing is not None:
        check_outputs({"--record-routing": a.record_routing}, {"--plan": a.plan})
    if a.placements is not None:
        taken = [f for f, on in (("--trace", a.trace is not None), ("--record-routing", a.record_routing is not None),
                                 ("--issue threads", a.issue == "threads")) if on]
        if taken:
            raise MoeschedError(f"--placements runs the placed model's own step, which has no {taken[0]} "
                                "(leave it out)")


def rank_and_world() -> tuple[int, int]:
    """RANK and WORLD_SIZE from the environment (torchrun sets them), checked."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise MoeschedError(f"RANK and WORLD_SIZE must be integers, got {os.environ.get('RANK')!r} and "
                            f"{os.environ.get('WORLD_SIZE')!r}; start the ranks with torchrun") from None
    if not 0 <= rank < world:
        raise MoeschedError(f"RANK {rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE {world})")
    return rank, world


def trace_path_problem(trace: str, plan: str) -> str | None:
    """Why ``trace`` cannot take the measured trace, or None (:func:`moesched.fileio.check_outputs`:
    empty, the plan itself, a directory, a special file, a missing or read-only folder)."""
    try:
        check_outputs({"--trace": trace}, {"--plan": plan})
    except MoeschedError as e:
        return str(e)
    return None


def _encode(text: str) -> list[int]:
    b = text.encode()[:MSG_BYTES]
    return list(b) + [0] * (MSG_BYTES - len(b))


def _decode(vals: list[int]) -> str:
    return bytes(v for v in vals if v).decode(errors="replace")


def agree(plan_or_error: object, world: int, emulate: int | None, refusal: str | None = None) -> str | None:
    """All-gather each rank's plan status over the default group (CPU tensors); return the
    same error text on every rank, or None when all ranks hold the same valid plan.
    ``refusal``: this rank's own reason to refuse the run (e.g. its --trace path)."""
    import torch
    import torch.distributed as dist

    from moesched.plan import Plan
    h, shape = [0] * 8, [0, 0, 0]
    if isinstance(plan_or_error, Plan):
        p = plan_or_error
        code, text = OK, ""
        h = [int(p.hash[i:i + 8], 16) for i in range(0, 64, 8)]
        shape = [p.cluster.world, p.cluster.nodes, p.cluster.gpus_per_node]
    else:
        code, text = LOAD_FAILED, str(plan_or_error)
    if code == OK and refusal is not None:
        code, text = REFUSED, refusal
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0)
    mine = torch.tensor([code] + h + shape + [local] + _encode(text), dtype=torch.long)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    rows = [t.tolist() for t in parts]
    for r, row in enumerate(rows):
        if row[0] == LOAD_FAILED:
            return f"rank {r} could not load its plan: {_decode(row[13:])}"
        if row[0] == REFUSED:
            return _decode(row[13:])
    return _layout_problem(rows, world, emulate)


def _layout_problem(rows: list[list[int]], world: int, emulate: int | None) -> str | None:
    """Ranks that hold different plans, or a plan whose cluster is not this run's."""
    hashes = [tuple(row[1:9]) for row in rows]
    if len(set(hashes)) > 1:
        diff = next(r for r in range(world) if hashes[r] != hashes[0])
        return f"ranks hold different plans (rank 0 and rank {diff} differ in plan hash)"
    pw, nodes, gpn, _ = rows[0][9:13]
    if pw != world:
        running = "1 rank is" if world == 1 else f"{world} ranks are"
        return (f"the plan is for {pw} ranks ({nodes}x{gpn}) but {running} running; start it with torchrun "
                f"{Cluster(nodes, gpn).torchrun_flags()}")
    if emulate is not None and emulate != nodes:
        return f"--emulate-nodes {emulate} but the plan's cluster has {nodes} nodes"
    locals_ = {row[12] for row in rows}
    if emulate is None and nodes > 1 and locals_ != {0} and locals_ != {gpn}:
        return f"the plan's cluster has {gpn} ranks per node but torchrun runs {sorted(locals_)} per node"
    return None


def _use_cuda(backend: str) -> bool:
    """Whether the run uses CUDA + NCCL; refuses ``nccl`` where this torch cannot run it."""
    import torch
    import torch.distributed as dist

    if backend == "auto":
        return torch.cuda.is_available()
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise MoeschedError("--backend nccl needs CUDA GPUs, but this torch build sees none "
                                "(use --backend gloo or auto)")
        if not dist.is_nccl_available():
            raise MoeschedError("--backend nccl: this torch build has no NCCL (use --backend gloo)")
        return True
    return False


def _start(a: argparse.Namespace, rank: int, world: int) -> tuple[bool, Watchdog]:
    """Join the process group (bounded by --timeout) and start this rank's watchdog."""
    import torch
    import torch.distributed as dist

    cuda = _use_cuda(a.backend)
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    try:
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=a.timeout))
    except Exception as e:  # noqa: BLE001 - a peer that never arrives: torch tries twice, --timeout each
        raise MoeschedError(f"rank {rank} could not join the {world} ranks (--timeout {a.timeout:g} s per attempt) "
                            f"({type(e).__name__}: {errors.first_line(e)})") from None
    return cuda, Watchdog(rank, world, a.heartbeat_timeout).start()


def main(argv: list[str] | None = None) -> int:
    errors.quiet_native_logs()
    return errors.guarded(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    a = parse_args(argv)
    check_args(a)
    for k, v in SAFE_ENV.items():
        os.environ.setdefault(k, v)
    rank, world = rank_and_world()
    if a.emulate_nodes is not None:
        if world % a.emulate_nodes:
            return errors.fail(f"--emulate-nodes {a.emulate_nodes} does not divide the {world} ranks")
        os.environ["NCCL_HOSTID"] = f"node{rank // (world // a.emulate_nodes)}"
    import torch.distributed as dist

    from moesched.plan import Plan
    cuda, watchdog = _start(a, rank, world)
    try:
        plan: object = Plan.load(a.plan)
    except Exception as e:  # noqa: BLE001 - every rank learns why in the agreement below
        plan = errors.describe(e, with_rank=False)
    sched, refusal = _refusal(a, plan, rank, world, cuda)
    err = agree(plan, world, a.emulate_nodes, refusal)
    code = errors.fail(err) if err is not None else \
        _run_placed(a, plan, sched, rank, world, cuda) if sched is not None else \
        _run_layout(a, plan, rank) if plan.layout is not None else _run(a, plan, rank, world, cuda)
    dist.barrier()  # no rank tears the group down while a peer still uses it
    watchdog.finish()  # a failure above ended the process (errors.guarded): this rank is done
    dist.destroy_process_group()
    return code


def _refusal(a: argparse.Namespace, plan: object, rank: int, world: int, cuda: bool
             ) -> tuple["PlacementSchedule | None", str | None]:
    """This rank's placement schedule (None without --placements) and its reason to refuse
    the run, or None (:func:`agree` tells every rank)."""
    from moesched.plan import Plan
    if not isinstance(plan, Plan):
        return None, None  # the plan's own load error is what every rank reports
    if a.placements is not None:
        from executor.placerun import load_for
        try:
            return load_for(plan, a.placements, world), None
        except Exception as e:  # noqa: BLE001 - every rank learns why in the agreement
            return None, errors.describe(e, with_rank=False)
    if plan.layout is not None and (cuda or a.trace or a.record_routing):
        return None, (f"plan {a.plan}: {plan.layout.label()} layout plans run one checked step on gloo/CPU only "
                      "(--backend gloo; no --trace, no --record-routing)")
    return None, trace_path_problem(a.trace, a.plan) if a.trace is not None and rank == 0 else None


def _run_placed(a: argparse.Namespace, plan: "Plan", sched: "PlacementSchedule", rank: int, world: int,
                cuda: bool) -> int:
    """Train following the placement schedule (:mod:`executor.placerun`); rank 0 prints the
    median step time, the throughput and the changes applied."""
    import torch

    from executor.layers import TORCH_DTYPES
    from executor.placerun import train, unchunked_note
    m = plan.model
    note = unchunked_note(plan)
    if rank == 0 and note is not None:
        print(f"executor: {note}", flush=True)
    dev, dtype = (torch.device("cuda"), TORCH_DTYPES[m.dtype]) if cuda else (torch.device("cpu"), torch.float32)
    res = train(plan, sched, rank, world, a.warmup, a.steps, a.seed, dev, dtype)
    if rank == 0:
        med = statistics.median(res.times_s)
        print(f"executor: {plan.policy} {m.name} {plan.cluster.label()} placed ({sched.policy}): median step "
              f"{med * 1e3:.3f} ms, {world * m.tokens / med:,.0f} tokens/s, loss {res.loss:.6f} "
              f"({a.steps} steps after {a.warmup} warm-up)", flush=True)
        print(f"executor: {res.report()}", flush=True)
    return 0


def _run_layout(a: argparse.Namespace, plan, rank: int) -> int:
    """One step of a layout plan, checked against the reference (:mod:`executor.layoutstep`):
    rank 0 prints one JSON line; exit 0 when loss and gradients match, else 1."""
    import json
    from dataclasses import asdict

    from executor.layoutstep import run_layout_step
    res = run_layout_step(plan, a.seed)
    if rank == 0:
        print(json.dumps({"layout": plan.layout.label(), **asdict(res)}), flush=True)
    return 0 if res.ok else 1


def _run(a: argparse.Namespace, plan, rank: int, world: int, cuda: bool) -> int:
    import torch
    import torch.distributed as dist

    from executor.layers import TORCH_DTYPES, MoEModule, make_batch
    from executor.runtime import PlannedStep

    m = plan.model
    dev = torch.device("cuda") if cuda else torch.device("cpu")
    dtype = TORCH_DTYPES[m.dtype] if cuda else torch.float32
    ep = plan.cluster.ep_size
    module = MoEModule(m, ep=ep, ep_rank=rank % ep, seed=a.seed, device=dev, dtype=dtype)
    step = PlannedStep(module, plan, timeout_s=a.timeout, issue=a.issue)
    x, t = make_batch(m, rank, a.seed, device=dev, dtype=dtype)
    rec = None
    if a.record_routing:
        from executor.routing_record import RoutingRecorder
        rec = RoutingRecorder(m, ep, source=f"python -m executor.run --plan {a.plan} --seed {a.seed}")
    times = []
    for i in range(a.warmup + a.steps):
        dist.barrier(group=step.groups.world_meta)
        t0 = time.perf_counter()
        loss = step(x, t)
        if cuda:
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
        if rec is not None:  # after the timing: a gather of a few integers
            rec.record(step, i)
    if rec is not None:
        rec.save(a.record_routing)
    med = statistics.median(times)
    if rank == 0:
        tok = world * m.tokens / med
        print(f"executor: {plan.policy} {m.name} {plan.cluster.label()}: median step {med * 1e3:.3f} ms, "
              f"{tok:,.0f} tokens/s, loss {loss:.6f} ({a.steps} steps after {a.warmup} warm-up)", flush=True)
    if a.trace:
        _write_trace(a.trace, step, plan, rank, world, med)
    return 0


def _write_trace(path: str, step, plan, rank: int, world: int, median_s: float) -> None:
    """Gather every rank's measured timeline of the last step; rank 0 writes the trace."""
    import pandas as pd
    import torch.distributed as dist

    from moesched.sim import Timeline
    tl = step.timeline()
    dfs = [None] * world
    dist.all_gather_object(dfs, (tl.df, tl.host), group=step.groups.world_meta)
    if rank == 0:
        from moesched.trace import write_chrome_trace
        meta = dict(tl.meta, ranks=world, median_step_us=median_s * 1e6, policy=plan.policy, plan_hash=plan.hash)
        write_chrome_trace(Timeline(pd.concat([d for d, _ in dfs], ignore_index=True), meta,
                                    host=pd.concat([h for _, h in dfs], ignore_index=True)),
                           path, label="measured")


if __name__ == "__main__":
    sys.exit(main())
