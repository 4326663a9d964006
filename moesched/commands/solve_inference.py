"""``moesched solve --mode inference``: a disaggregated attention/expert (DEP) forward pass.

The attention group (``--ag`` GPUs: attention and shared experts) and the expert group
(``--eg`` GPUs: the routed experts) are solved by FinDEP's Algorithm 1, compared with
PPPipe (MegaScale-Infer) and naive DEP, and refined by moesched's order search
(:mod:`moesched.findep_solve`); without ``--ag``/``--eg`` every split of ``--cluster``'s
GPUs is tried. Task times come from the profile (:mod:`moesched.findep_profile`).
``--out`` gets the chosen schedule as JSON (format ``moesched.dep-schedule``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from moesched.commands.setup import check_command_outputs, check_time_limit, resolve
from moesched.errors import MoeschedError
from moesched.fileio import write_atomic
from moesched.limits import MAX_RANKS
from moesched.findep import dep_model, memory_bound, throughput_tokens_s
from moesched.findep_profile import profile_times
from moesched.findep_solve import DepResult, algorithm1, naive_dep, own_search, pppipe, schedule_of
from moesched.memory import gpu_memory_bytes

FORMAT = "moesched.dep-schedule"
#: Seconds of moesched's order search over all splits when ``--time-limit`` is not given.
SEARCH_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("training", "inference"), default="training",
                        help="training (default): a training step; inference: a DEP forward pass")
    parser.add_argument("--ag", type=int, default=None, help="inference: attention GPUs")
    parser.add_argument("--eg", type=int, default=None, help="inference: expert GPUs")


def _splits(args: argparse.Namespace, world: int) -> list[tuple[int, int]]:
    if (args.ag is None) != (args.eg is None):
        raise MoeschedError("--ag and --eg go together (or neither: every split of --cluster's GPUs)")
    if args.ag is not None:
        if not (1 <= args.ag <= MAX_RANKS and 1 <= args.eg <= MAX_RANKS):
            raise MoeschedError(f"--ag and --eg must be between 1 and {MAX_RANKS}, got {args.ag} and {args.eg}")
        if getattr(args, "cluster", None) and args.ag + args.eg != world:
            raise MoeschedError(f"--ag {args.ag} + --eg {args.eg} = {args.ag + args.eg} GPUs, but --cluster "
                                f"{args.cluster} has {world}")
        return [(args.ag, args.eg)]
    if world < 2:
        raise MoeschedError("inference needs at least 2 GPUs (an attention and an expert group)")
    return [(ag, world - ag) for ag in range(1, world)]


def _solve_split(args, model, profile, ag: int, eg: int, deadline: float) -> dict[str, DepResult]:
    if model.experts % eg:
        raise MoeschedError(f"{model.experts} experts do not divide over {eg} expert GPUs")
    dm = dep_model(model)
    gpu_bytes = gpu_memory_bytes(profile.hardware)
    mm = memory_bound(dm, ag, gpu_bytes)
    if mm < 1:
        raise MoeschedError(f"infeasible memory bound: not one sample of {dm.seq_len} tokens fits an attention GPU "
                            f"({gpu_bytes / 1e9:.1f} GB, 90% usable, holds every layer's attention and shared-expert "
                            f"weights and one sample's key/value cache): r1 m_a <= M_max = 0")
    times = profile_times(model, profile, ag, eg)
    f = algorithm1(dm, times, ag, mm)
    return {"moesched": own_search(dm, times, ag, mm, f, deadline=deadline), "findep": f, "pppipe": pppipe(dm, times, ag, mm),
            "naive-dep": naive_dep(dm, times, ag, mm)}


def run(args: argparse.Namespace) -> int:
    check_command_outputs(args, {"--out": args.out})
    check_time_limit(args.time_limit)
    model, profile, cluster = resolve(args, any_ep=True)
    limit_s = args.time_limit or SEARCH_S
    deadline = time.perf_counter() + limit_s
    if model.dense_layers:
        print(f"note: {model.name}'s {len(model.dense_layers)} dense layer(s) are priced as MoE layers "
              f"(FinDEP's cost model has one kind of layer)")
    rows, best = [], None
    splits = [s for s in _splits(args, cluster.world) if model.experts % s[1] == 0 or args.ag is not None]
    if not splits:
        raise MoeschedError(f"no split of {cluster.world} GPUs puts {model.experts} experts evenly on the expert group")
    for ag, eg in splits:
        res = _solve_split(args, model, profile, ag, eg, deadline)
        dm = dep_model(model)
        times = profile_times(model, profile, ag, eg)
        for name, r in res.items():
            rate = throughput_tokens_s(dm, ag, r.config, r.makespan_ms)
            rows.append(dict(ag=ag, eg=eg, policy=name, tokens_per_s=rate, makespan_ms=r.makespan_ms,
                             exposed_comm_ms=schedule_of(times, dm.layers, r).exposed_comm_ms(), m_a=r.config.m_a,
                             r1=r.config.r1, r2=r.config.r2, order=r.config.order if not r.ag_order else "searched"))
            if name == "moesched" and (best is None or rate > best[0]):
                best = (rate, ag, eg, r)
    assert best is not None
    if time.perf_counter() > deadline:
        print(f"moesched: solve: order search stopped at its time limit of {limit_s:g} s; "
              f"the best order found is kept", file=sys.stderr)
    print(f"model: {model.name} ({model.layers} layers, sequence {model.seq_len}), profile {profile.name}; "
          f"DEP inference, a forward pass of the whole sequence")
    print(_table(rows))
    rate, ag, eg, r = best
    print(f"chosen: ag={ag} eg={eg}, m_a={r.config.m_a} r1={r.config.r1} r2={r.config.r2}: {rate:,.0f} tokens/s")
    doc = {"format": FORMAT, "version": 1, "model": model.to_dict(), "ag": ag, "eg": eg,
           "profile": profile.name, "config": r.config.__dict__, "ag_order": [list(x) for x in (r.ag_order or [])],
           "predicted": {"makespan_ms": r.makespan_ms, "tokens_per_s": rate}, "table": rows}
    write_atomic(args.out, json.dumps(doc, indent=1) + "\n")
    print(f"schedule written to {args.out}")
    return 0


def _table(rows: list[dict]) -> str:
    head = f"{'ag,eg':>6} {'policy':10} {'tokens/s':>12} {'ms':>10} {'exposed ms':>10} {'m_a':>4} {'r1':>4} {'r2':>3}  order"
    out = [head]
    for x in rows:
        out.append(f"{x['ag']:>3},{x['eg']:<2} {x['policy']:10} {x['tokens_per_s']:>12,.0f} {x['makespan_ms']:>10.2f} "
                   f"{x['exposed_comm_ms']:>10.2f} {x['m_a']:>4} {x['r1']:>4} {x['r2']:>3}  {x['order']}")
    return "\n".join(out)
