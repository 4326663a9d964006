"""Predicted against measured, on real GPUs: the executor runs every plan the simulator scored.

Run under torchrun, once per network regime (the regime is the process environment:
``NCCL_P2P_DISABLE=1``, or ``--emulate-nodes 2``)::

    torchrun --nproc_per_node=4 -m moesched validate --profile profiles/h200x4-hostmem.json \
        --configs docs/validation_configs.json --out results/validation.csv --traces results/traces

For each configuration and each schedule (every published policy and moesched's solved
plan), rank 0 builds the plan (in a process pool, before any GPU work), every rank runs it
for ``--warmup`` + ``--steps`` steps, and rank 0 writes its CSV row: predicted and measured
step time (median), their error, and the mean error of the per-task durations of compute
tasks in the last step. With ``--repeats K`` every plan runs K times in interleaved passes
and its row is redone after each; the CSV is rewritten atomically as each plan is measured
(:class:`moesched.validation_csv.CsvTable`). Predicted and measured Chrome traces go to
``--traces``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta

import torch
import torch.distributed as dist

from moesched.costs.calibrate import without_compute_factors
from moesched.cluster import Cluster
from moesched.configs import load_configs
from moesched.errors import MoeschedError
from moesched.host import STEP_KINDS
from moesched.plan import Plan, from_timeline
from moesched.profile import Profile
from moesched.routing import Routing
from moesched.routing import summary as routing_summary
from moesched.validation_csv import CsvTable, RepeatHost, err_pct, measured_columns, remeasured
from moesched.validation_summary import summarize

from executor import errors
from executor.watchdog import DEFAULT_TIMEOUT_S, Watchdog

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def make_plan(args: tuple) -> dict:
    """Plan dict for (profile path, model dict, cluster dict, schedule name); in a worker."""
    from moesched.models import MoEModel
    from moesched.schedules import get
    from moesched.schedules.base import evaluate
    prof_path, mdict, cdict, name = args
    profile, model, cluster = Profile.load(prof_path), MoEModel.from_dict(mdict), Cluster.from_dict(cdict)
    if name == "moesched":
        from moesched.solve.api import solve
        ev = solve(model, cluster, profile).evaluation
    else:
        ev = evaluate(model, cluster, profile, get(name).schedule(model, cluster, profile))
    return from_timeline(name, model, cluster, ev.schedule.knobs, ev.timeline, profile).to_dict()


def single_pair_model(profile: Profile) -> Profile:
    """``profile`` under the simpler host model, a reference column of the CSV: the
    all-to-all's interference pair for every collective, and no step setup or finish."""
    host = profile.host
    if host is not None:
        drop = lambda by: {k: c for k, c in by.items() if k not in STEP_KINDS}  # noqa: E731
        host = dataclasses.replace(host, kinds=drop(host.kinds), shapes={s: drop(by) for s, by in host.shapes.items()})
    return dataclasses.replace(profile, interference_by_op={}, host=host)


def _task_error_pct(measured, predicted) -> float:
    """Mean |error| % of compute-task durations, measured rank 0 vs predicted."""
    m = measured[(measured["rank"] == 0) & (measured["resource"] == "compute")]
    p = predicted[(predicted["rank"] == 0) & (predicted["resource"] == "compute")].set_index("task")
    errs = []
    for t, s, e in zip(m["task"], m["start_us"], m["end_us"]):
        if t in p.index:
            pd_ = float(p.at[t, "end_us"] - p.at[t, "start_us"])
            if pd_ > 1.0:
                errs.append(abs((e - s) - pd_) / pd_ * 100)
    return statistics.fmean(errs) if errs else float("nan")


def main(args: argparse.Namespace) -> int:
    """``moesched validate`` on this rank; any failure is one line ``moesched: error: ...``
    on stderr and status 2 (:mod:`executor.errors`), a dead or stopped peer included
    (:mod:`executor.watchdog`)."""
    return errors.guarded(lambda: _main(args))


def _solve_plans(jobs: list[tuple], rank: int, workers: int) -> list[dict]:
    """Rank 0 solves every (profile path, model, cluster, schedule) job in ``workers``
    processes; every rank gets the plans (as dicts) by broadcast."""
    box: list = [None]
    if rank == 0:
        t0 = time.time()
        with ProcessPoolExecutor(max_workers=min(len(jobs), workers)) as ex:
            box[0] = list(ex.map(make_plan, jobs))
        print(f"validate: {len(jobs)} plans solved in {time.time() - t0:.1f} s", flush=True)
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _main(args: argparse.Namespace) -> int:
    for k, v in SAFE_ENV.items():
        os.environ.setdefault(k, v)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if args.emulate_nodes:
        os.environ["NCCL_HOSTID"] = f"node{rank // (world // args.emulate_nodes)}"
    profile = Profile.load(args.profile)
    configs = load_configs(args.configs)
    cluster = Cluster(profile.nodes, profile.gpus_per_node)
    if cluster.world != world:
        raise MoeschedError(f"profile {profile.name} is for {cluster.world} ranks but {world} are running")
    schedules = [s.strip() for s in args.schedules.split(",") if s.strip()]  # checked by the command
    issues = [s for s in args.issue.split(",") if s]
    regime = args.regime or str(profile.hardware["regime"])
    repeats = getattr(args, "repeats", 1)
    if repeats < 1:
        raise MoeschedError(f"--repeats must be at least 1, got {repeats}")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timedelta(seconds=300))
    watchdog = Watchdog(rank, world, getattr(args, "heartbeat_timeout", DEFAULT_TIMEOUT_S)).start()
    jobs = [(args.profile, c.model.to_dict(), cluster.to_dict(), s) for c in configs for s in schedules]
    plans = _solve_plans(jobs, rank, args.workers)
    if args.traces and rank == 0:
        os.makedirs(args.traces, exist_ok=True)
    table = CsvTable(args.out) if rank == 0 else None  # rewritten as each plan is measured
    dev = torch.device("cuda" if cuda else "cpu")
    times: dict[tuple, list[list[float]]] = {}  # (plan index, issue) -> step times (ms) per repeat
    hosts: dict[tuple, list[RepeatHost]] = {}   # ... -> the host around each repeat
    for rep in range(repeats):  # interleaved: a drift of the machine spreads over every plan alike
        for i, ((_, _, _, sched), pd_) in enumerate(zip(jobs, plans)):
            plan = Plan.from_dict(pd_)
            plan.validate()
            for issue in issues:
                key = (i, issue)
                row = _measure(args, plan, sched, issue, regime, profile, cluster, rank, dev, cuda,
                               times.setdefault(key, []), hosts.setdefault(key, []),
                               table.rows.get(key) if table else None)
                if table is not None:
                    table.put(key, row)
                    if rep == repeats - 1:
                        _print_row(row)
        if rank == 0 and repeats > 1:
            print(f"validate: repeat {rep + 1} of {repeats} done ({len(jobs) * len(issues)} runs)", flush=True)
    if table is not None:
        summarize(list(table.rows.values()))
    dist.barrier()  # no rank tears the group down while a peer still uses it (as executor.run)
    watchdog.finish()
    dist.destroy_process_group()
    return 0


@dataclasses.dataclass
class Measured:
    """One plan's run on this rank: its step (for the timeline and routing) and step times (ms)."""

    step: object
    module: object
    times_ms: list[float]


def _run_plan(args: argparse.Namespace, plan: Plan, issue: str, cluster: Cluster, rank: int,
              dev: torch.device, cuda: bool, hosts: list[RepeatHost] | None) -> Measured:
    """Build the plan's step, take the host probe and run ``args.warmup`` + ``args.steps``
    steps (what the host did, into ``hosts``); the timed ones' durations in ms."""
    from executor.layers import TORCH_DTYPES, MoEModule, make_batch
    from executor.runtime import PlannedStep
    from executor.profiling.timing import cpu_contention, cpu_sample, gc_quiet, host_probe_us
    from executor.skewed import apply_skew
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    m = plan.model
    dtype = TORCH_DTYPES[m.dtype] if cuda else torch.float32
    module = MoEModule(m, ep=cluster.ep_size, ep_rank=rank % cluster.ep_size, seed=0, device=dev, dtype=dtype)
    apply_skew(module, getattr(args, "skew", 0.0))
    step = PlannedStep(module, plan, issue=issue)
    x, t = make_batch(m, rank, 0, device=dev, dtype=dtype)
    probe = torch.tensor([host_probe_us(dev)], dtype=torch.float64)
    dist.all_reduce(probe, op=dist.ReduceOp.MAX)  # CPU tensor: the gloo half of the group
    times, cpu0 = [], cpu_sample()
    with gc_quiet():  # no collection inside the timed steps (executor.profiling.timing.gc_quiet)
        for i in range(args.warmup + args.steps):
            dist.barrier()
            sync()
            t0 = time.perf_counter()
            step(x, t)
            sync()
            if i >= args.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    if hosts is not None:
        hosts.append(RepeatHost(float(probe), *cpu_contention(cpu0, cpu_sample())))
    return Measured(step, module, times)


def _measure(args: argparse.Namespace, plan: Plan, sched: str, issue: str, regime: str, profile: Profile,
             cluster: Cluster, rank: int, dev: torch.device, cuda: bool, runs: list[list[float]],
             hosts: list[RepeatHost], row: dict | None) -> dict | None:
    """Run ``plan`` for warm-up + timed steps and add their times (ms) to ``runs`` (one list
    per repeat), and what the host did around them to ``hosts``. Rank 0 returns the plan's
    CSV row: on the first repeat built in full and both traces written (:func:`_report`, from
    that repeat's last step), after a later one ``row`` with its measured columns and errors
    redone (median over every repeat's steps; spread: range of the repeats' medians over it)."""
    run = _run_plan(args, plan, issue, cluster, rank, dev, cuda, hosts)
    runs.append(run.times_ms)
    if len(runs) == 1:
        from executor.skewed import record_step
        measured = run.step.timeline()
        routing = Routing.from_lists(run.step.routing())
        recorded = record_step(run.step, plan)  # a collective
        if rank == 0:
            row = _report(args, plan, sched, issue, regime, profile, runs, hosts, measured, routing, recorded)
    elif rank == 0 and row is not None:
        row = remeasured(row, runs, hosts)
        row.update(_probe_columns(plan, profile, [h.probe_us for h in hosts], row["measured_ms"]))
    del run
    if cuda:
        torch.cuda.empty_cache()
    return row


def _report(args: argparse.Namespace, plan: Plan, sched: str, issue: str, regime: str, profile: Profile,
            runs: list[list[float]], hosts: list[RepeatHost], measured, routing: Routing, recorded) -> dict:
    """Rank 0: the plan's CSV row and its traces; ``recorded``: the last step's routing
    (:func:`executor.skewed.record_step`)."""
    from moesched.trace import write_chrome_trace
    m = plan.model
    med = statistics.median([t_ for run in runs for t_ in run])
    pred = plan.replay(profile)
    routed = plan.replay(profile, routing)  # ... with the step's routing: per-rank load
    row = _prediction_columns(plan, profile, pred, routed, med)
    row.update(measured_columns(runs, hosts))
    row.update(regime=regime, config=m.name, schedule=sched,
               task_error_pct=round(_task_error_pct(measured.df, pred.df), 3),
               max_recv_share=routing_summary(routing, m)["max_recv_share"],
               knobs=f"r_fwd={list(plan.knobs.r_fwd)} r_bwd={list(plan.knobs.r_bwd)} "
                     f"at={plan.knobs.at_chunked} Sp={plan.knobs.grad_chunk_bytes} "
                     f"sync={plan.knobs.grad_sync} serial={plan.knobs.serialize}",
               plan_hash=plan.hash[:12], runs_hash=plan.runs_hash[:12], issue=issue)
    row.update(_call_columns(plan, measured))
    row.update(_probe_columns(plan, profile, [h.probe_us for h in hosts], med))
    row.update(_uneven_columns(args, plan, profile, recorded, med))
    if args.traces:
        tag = "" if issue == "threads" else f"_{issue}"
        base = os.path.join(args.traces, f"{regime}_{m.name}_{sched}{tag}")
        write_chrome_trace(pred, base + "_predicted.json", label="predicted",
                           extra_timelines={"predicted, measured routing": routed})
        write_chrome_trace(measured, base + "_measured.json", label="measured")
    return row


def _print_row(row: dict) -> None:
    """The line of a plan's final row."""
    print(f"validate {row['regime']} {row['config']} {row['schedule']} [{row['issue']}]: predicted "
          f"{row['predicted_ms']:.2f} ms, measured {row['measured_ms']:.2f} ms ({row['error_pct']:+.1f} %), tasks "
          f"{row['task_error_pct']:.1f} %; with its routing {row['predicted_routed_ms']:.2f} ms "
          f"({row['error_routed_pct']:+.1f} %)", flush=True)


def _prediction_columns(plan: Plan, profile: Profile, pred, routed, med: float) -> dict:
    """Predicted step times (ms) of every model variant and their errors against ``med``."""
    p_ms, r_ms = pred.makespan_us / 1e3, routed.makespan_us / 1e3
    gpu_only = profile if profile.host is None else dataclasses.replace(profile, host=None)
    g_ms = plan.replay(gpu_only).makespan_us / 1e3  # the same prediction without the host model
    # ... and with compute costs as micro-benchmarked, without the in-situ factors
    b_ms = plan.replay(without_compute_factors(profile)).makespan_us / 1e3 \
        if profile.meta.get("insitu_compute") else p_ms
    s_ms = plan.replay(single_pair_model(profile)).makespan_us / 1e3
    # compute pricing: the per-kind line where no shape curve (no operator tables), and the
    # operator composition everywhere (shape curves of compute kinds dropped)
    k_ms = plan.replay(dataclasses.replace(profile, ops=None)).makespan_us / 1e3
    o_ms = plan.replay(ops_only(profile)).makespan_us / 1e3 if profile.ops is not None else k_ms
    return {"predicted_ms": round(p_ms, 4), "error_pct": err_pct(p_ms, med),
            "predicted_exposed_ms": round(pred.exposed_comm_us() / 1e3, 4),
            "predicted_gpu_only_ms": round(g_ms, 4), "error_gpu_only_pct": err_pct(g_ms, med),
            "predicted_routed_ms": round(r_ms, 4), "error_routed_pct": err_pct(r_ms, med),
            "predicted_bench_ms": round(b_ms, 4), "error_bench_pct": err_pct(b_ms, med),
            "predicted_single_pair_ms": round(s_ms, 4), "error_single_pair_pct": err_pct(s_ms, med),
            "predicted_kindline_ms": round(k_ms, 4), "error_kindline_pct": err_pct(k_ms, med),
            "predicted_ops_ms": round(o_ms, 4), "error_ops_pct": err_pct(o_ms, med)}


def ops_only(profile: Profile) -> Profile:
    """``profile`` pricing every compute task by its operators (:mod:`moesched.optables`):
    the per-shape compute curves dropped, the in-situ all-to-alls kept."""
    from moesched.kinds import ALL_COMPUTE_KINDS
    shapes = {s: {k: c for k, c in by.items() if k not in ALL_COMPUTE_KINDS} for s, by in profile.shapes.items()}
    return dataclasses.replace(profile, shapes=shapes)


def _uneven_columns(args: argparse.Namespace, plan: Plan, profile: Profile, recorded, med: float) -> dict:
    """The plan replayed under the last step's per-expert load (:mod:`executor.skewed`)."""
    from executor.skewed import uneven_prediction
    got = uneven_prediction(plan, profile, recorded)
    if got is None:
        return {"skew": getattr(args, "skew", 0.0)}
    tl, load = got
    u_ms = tl.makespan_us / 1e3
    return {"skew": getattr(args, "skew", 0.0), "max_expert_load": round(load, 3),
            "predicted_uneven_ms": round(u_ms, 4), "error_uneven_pct": err_pct(u_ms, med)}


def _call_columns(plan: Plan, measured) -> dict:
    """The last step around its tasks (executor.profiling.host.step_samples), ms."""
    from executor.profiling.host import step_samples
    (_, _, _, _, setup), (_, _, _, _, finish) = step_samples("", plan, measured)
    return {"last_call_ms": round(measured.meta["call_us"] / 1e3, 4), "last_setup_ms": round(setup / 1e3, 4),
            "last_finish_ms": round(finish / 1e3, 4), "last_trace_ms": round(measured.makespan_us / 1e3, 4)}


def _probe_columns(plan: Plan, profile: Profile, probes: list[float] | None, med: float) -> dict:
    """The host priced by the probe: the profile's host costs times (probe now / the
    profiler's probe); empty without a probe or a host model."""
    p0 = profile.meta.get("host_probe_us")
    if not (probes and p0 and profile.host is not None):
        return {}
    f = statistics.median(probes) / float(p0)
    q_ms = plan.replay(dataclasses.replace(profile, host=profile.host.scaled(f))).makespan_us / 1e3
    return {"host_probe_us": round(statistics.median(probes), 3), "host_factor": round(f, 4),
            "predicted_probe_ms": round(q_ms, 4), "error_probe_pct": err_pct(q_ms, med)}


if __name__ == "__main__":
    sys.exit(main(argparse.Namespace()))
