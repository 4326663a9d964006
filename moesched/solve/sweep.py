"""Run every published policy and the solver on each layer of a grid; summarise speedups.

One CSV row per feasible layer: shape columns, ``<policy>_us`` per published policy
(empty where a policy cannot schedule the layer), ``moesched_us``, and the chosen knobs.
Every ``*_us`` column is the step time of the one definition the tables use: the plan as
the executor runs it, host model included when the profile has host costs
(:func:`moesched.solve.api.solve`'s ``executed_us``).
Work is spread over processes (each loads the profile once).
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import statistics
import threading
from typing import Any, Callable, Iterable

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.models import MoEModel
from moesched.profile import Profile, freeze_loaded
from moesched.schedules import POLICIES
from moesched.solve.grids import feasible, shape_columns
from moesched.solve.api import solve

_STATE: dict[str, Any] = {}


def row_for(model: MoEModel, cluster: Cluster, profile: Profile) -> dict[str, Any]:
    """Solve one layer; the CSV row (see the module docstring)."""
    res = solve(model, cluster, profile)
    row = shape_columns(model)
    for r in res.table:
        row[f"{r.policy}_us"] = None if r.executed_us is None else round(r.executed_us, 3)
    k = res.schedule.knobs
    prio, source = res.schedule.notes.get("priority"), str(res.schedule.notes.get("source"))
    row.update({"moesched_us": round(res.executed_us, 3), "r_fwd": "/".join(map(str, sorted(set(k.r_fwd)))),
                "r_bwd": "/".join(map(str, sorted(set(k.r_bwd)))), "at_chunked": k.at_chunked,
                "grad_chunk_bytes": k.grad_chunk_bytes, "grad_sync": k.grad_sync, "a2a": k.a2a,
                "priority": source.split(":")[-1] if source.startswith("published:") else prio,
                "source": source})
    return row


def _init(cluster: Cluster, profile_dict: dict) -> None:
    # Ctrl-C is the parent's to handle (it terminates the pool); SIGTERM from
    # Pool.terminate ends a worker silently.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _STATE["cluster"] = cluster
    _STATE["profile"] = Profile.from_dict(profile_dict)
    freeze_loaded()


def _work(model: MoEModel) -> dict[str, Any]:
    return row_for(model, _STATE["cluster"], _STATE["profile"])


def run(models: list[MoEModel], cluster: Cluster, profile: Profile, workers: int = 1,
        on_row: Callable[[], None] | None = None) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Rows for the feasible models (grid order) and (name, reason) for the skipped ones."""
    todo, skipped = [], []
    for m in models:
        why = feasible(m, cluster, profile)
        (skipped.append((m.name, why)) if why else todo.append(m))
    rows: list[dict[str, Any]] = []
    if workers <= 1 or len(todo) < 4:
        for m in todo:
            try:
                rows.append(row_for(m, cluster, profile))
            except MoeschedError as e:
                skipped.append((m.name, str(e)))
            if on_row:
                on_row()
        return rows, skipped
    with _quiet_pool(workers, cluster, profile) as pool:
        for row in pool.imap(_work, todo, chunksize=4):
            rows.append(row)
            if on_row:
                on_row()
    return rows, skipped


def _quiet_pool(workers: int, cluster: Cluster, profile: Profile) -> Any:
    """A pool whose workers ignore Ctrl-C (SIGINT goes to the whole process group): the
    parent alone raises KeyboardInterrupt and leaving the ``with`` block terminates the
    workers, so an interrupted sweep prints one line and no worker tracebacks."""
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:  # workers forked in this window inherit SIG_IGN before _init runs
        return ctx.Pool(workers, initializer=_init, initargs=(cluster, profile.to_dict()))
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)


def _stats(xs: Iterable[float]) -> dict[str, float]:
    v = [x for x in xs if x is not None]
    if not v:
        return {"n": 0}
    return {"n": len(v), "mean": statistics.fmean(v), "median": statistics.median(v), "min": min(v), "max": max(v)}


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Speedup distributions of moesched over vanilla, over the best published policy of
    each layer, and over each policy (speedup = policy step / moesched step)."""
    out: dict[str, dict[str, float]] = {}
    best_pub = []
    for r in rows:
        pubs = [r[f"{n}_us"] for n in POLICIES if r.get(f"{n}_us") is not None]
        best_pub.append(min(pubs) / r["moesched_us"] if pubs else None)
    out["over best published"] = _stats(best_pub)
    for n in POLICIES:
        out[f"over {n}"] = _stats(r[f"{n}_us"] / r["moesched_us"] if r.get(f"{n}_us") is not None else None
                                  for r in rows)
    return out


def format_summary(s: dict[str, dict[str, float]]) -> str:
    """A fixed-width table of :func:`summary`."""
    lines = ["moesched's speedup over each policy = policy step / moesched step (host model; > 1: moesched faster)",
             f"{'speedup of moesched':24s} {'n':>5s} {'mean':>7s} {'median':>7s} {'min':>7s} {'max':>7s}"]
    for k, v in s.items():
        if v.get("n"):
            lines.append(f"{k:24s} {v['n']:5d} {v['mean']:7.3f} {v['median']:7.3f} {v['min']:7.3f} {v['max']:7.3f}")
        else:
            lines.append(f"{k:24s} {0:5d}       -")
    return "\n".join(lines)
