"""Discrete-event simulation of a task graph on serial resources, with interference.

Resources: one ``compute`` stream per rank, and the links ``comm_intra`` and
``comm_inter``, each running one collective at a time across all ranks (a collective
starts when every rank has it ready: NCCL needs the same order on every rank). The
all-to-alls and the gradient all-reduce share a link, as on real hardware.

Scheduling is list scheduling under priorities (lower runs first): whenever a resource
is free it starts the ready task of highest priority (``strict=False``), or, with
``strict=True``, exactly the next task of its sequence (tasks of that resource sorted by
priority), waiting for it if it is not ready: this is what CUDA streams fed in a fixed
order do, and what the executor replays.

Interference (the profile's factors): while any collective runs, compute progresses at
1/compute_slowdown of its speed; while any rank computes, collectives progress at
1/comm_slowdown. Progress is tracked as remaining full-speed µs, so a task that overlaps
only in part is stretched only for that part.

Per-rank costs: a node may carry ``duration_by_rank_us`` (one value per simulated rank);
the graph attribute ``ranks`` sets how many ranks are simulated (default 1: all ranks of a
symmetric step are identical). A collective takes the longest of its ranks' durations.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Mapping

import networkx as nx
import pandas as pd

from moesched.errors import MoeschedError

LINKS = ("comm_intra", "comm_inter")
_RES_INDEX = {"compute": 0, "comm_intra": 1, "comm_inter": 2}
COLUMNS = ["task", "kind", "layer", "chunk", "phase", "rank", "resource", "start_us", "end_us"]


@dataclass
class Timeline:
    """Result of a simulation (or a measurement).

    df: one row per task and rank: task, kind, layer, chunk, phase, rank, resource,
        start_us, end_us.
    """

    df: pd.DataFrame
    meta: dict = field(default_factory=dict)

    @property
    def makespan_us(self) -> float:
        return float(self.df["end_us"].max() - min(0.0, float(self.df["start_us"].min()))) if len(self.df) else 0.0

    def busy_us(self, rank: int = 0) -> dict[str, float]:
        """Busy time per resource on ``rank``, µs."""
        d = self.df[self.df["rank"] == rank]
        return {r: float((g["end_us"] - g["start_us"]).sum()) for r, g in d.groupby("resource")}

    def exposed_comm_us(self, rank: int = 0) -> float:
        """Time on ``rank`` during which some collective runs and compute is idle, µs."""
        d = self.df[self.df["rank"] == rank]
        comm = _union(d.loc[d["resource"] != "compute", ["start_us", "end_us"]].to_numpy().tolist())
        comp = _union(d.loc[d["resource"] == "compute", ["start_us", "end_us"]].to_numpy().tolist())
        return _length(comm) - _intersection_length(comm, comp)

    def order(self, rank: int = 0) -> list[str]:
        """Tasks of ``rank`` by start time: an issue order the executor can replay."""
        d = self.df[self.df["rank"] == rank]
        return d.sort_values(["start_us", "end_us"], kind="stable")["task"].tolist()


def simulate(g: nx.DiGraph, priority: Mapping[str, float] | None = None, *, strict: bool = False,
             compute_slowdown: float | None = None, comm_slowdown: float | None = None) -> Timeline:
    """Simulate graph ``g`` (see :mod:`moesched.graph`) and return its Timeline.

    priority: task -> number, lower first; default the graph's creation order ``seq``.
    compute_slowdown, comm_slowdown: interference factors; default those stored in the
    graph attribute ``interference`` (set by the caller from the profile), else 1.0.
    """
    names = list(g.nodes)
    n = len(names)
    index = {t: i for i, t in enumerate(names)}
    nodes = g.nodes
    R = int(g.graph.get("ranks", 1))
    inter = g.graph.get("interference", (1.0, 1.0))
    sc = float(inter[0] if compute_slowdown is None else compute_slowdown)
    sm = float(inter[1] if comm_slowdown is None else comm_slowdown)
    res = [0] * n
    dur: list[list[float]] = [None] * n  # type: ignore[list-item]
    prio = [0.0] * n
    for i, t in enumerate(names):
        a = nodes[t]
        res[i] = _RES_INDEX[a["resource"]]
        byr = a.get("duration_by_rank_us")
        dur[i] = [float(x) for x in byr] if byr is not None else [float(a["duration_us"])] * R
        if len(dur[i]) != R:
            raise MoeschedError(f"task {t} has {len(dur[i])} per-rank durations for {R} ranks")
        prio[i] = float(a["seq"] if priority is None else priority[t])
    succ: list[list[int]] = [[index[s] for s in g.successors(t)] for t in names]
    cnt_comm = [0] * n
    cnt = [[0] * n for _ in range(R)]
    for i, t in enumerate(names):
        for p in g.predecessors(t):
            if res[i]:
                cnt_comm[i] += R if res[index[p]] == 0 else 1
            else:
                for k in range(R):
                    cnt[k][i] += 1

    # Ready structures: heaps of (priority, seq, i); strict mode uses sequences.
    comp_heap: list[list[tuple[float, int]]] = [[] for _ in range(R)]
    link_heap: list[list[tuple[float, int]]] = [[], [], []]
    ready_c = [[False] * n for _ in range(R)]
    ready_l = [False] * n
    if strict:
        seqs = [sorted((i for i in range(n) if res[i] == r), key=lambda i: (prio[i], i)) for r in range(3)]
        ptr_c = [0] * R
        ptr_l = [0, 0, 0]

    def mark_ready_comp(k: int, i: int) -> None:
        if strict:
            ready_c[k][i] = True
        else:
            heapq.heappush(comp_heap[k], (prio[i], i))

    def mark_ready_link(i: int) -> None:
        if strict:
            ready_l[i] = True
        else:
            heapq.heappush(link_heap[res[i]], (prio[i], i))

    for i in range(n):
        if res[i] == 0:
            for k in range(R):
                if cnt[k][i] == 0:
                    mark_ready_comp(k, i)
        elif cnt_comm[i] == 0:
            mark_ready_link(i)

    start_c = [[0.0] * n for _ in range(R)]
    end_c = [[0.0] * n for _ in range(R)]
    start_l = [0.0] * n
    end_l = [0.0] * n
    run_c: list[int] = [-1] * R
    rem_c = [0.0] * R
    run_l = [-1, -1, -1]
    rem_l = [0.0, 0.0, 0.0]
    t = 0.0
    done = 0
    total = n * R  # compute instances count R each; collectives count R too (one per rank)
    EPS = 1e-9
    while True:
        # Start what can start.
        for k in range(R):
            if run_c[k] < 0:
                if strict:
                    seq = seqs[0]
                    if ptr_c[k] < len(seq) and ready_c[k][seq[ptr_c[k]]]:
                        i = seq[ptr_c[k]]
                        ptr_c[k] += 1
                        run_c[k], rem_c[k], start_c[k][i] = i, dur[i][k], t
                elif comp_heap[k]:
                    i = heapq.heappop(comp_heap[k])[1]
                    run_c[k], rem_c[k], start_c[k][i] = i, dur[i][k], t
        for j in (1, 2):
            if run_l[j] < 0:
                if strict:
                    seq = seqs[j]
                    if ptr_l[j] < len(seq) and ready_l[seq[ptr_l[j]]]:
                        i = seq[ptr_l[j]]
                        ptr_l[j] += 1
                        run_l[j], rem_l[j], start_l[i] = i, max(dur[i]), t
                elif link_heap[j]:
                    i = heapq.heappop(link_heap[j])[1]
                    run_l[j], rem_l[j], start_l[i] = i, max(dur[i]), t
        comp_on = any(x >= 0 for x in run_c)
        comm_on = run_l[1] >= 0 or run_l[2] >= 0
        if not comp_on and not comm_on:
            break
        rc = 1.0 / sc if comm_on else 1.0
        rm = 1.0 / sm if comp_on else 1.0
        dt = float("inf")
        for k in range(R):
            if run_c[k] >= 0:
                dt = min(dt, rem_c[k] / rc)
        for j in (1, 2):
            if run_l[j] >= 0:
                dt = min(dt, rem_l[j] / rm)
        t += dt
        for k in range(R):
            i = run_c[k]
            if i < 0:
                continue
            rem_c[k] -= dt * rc
            if rem_c[k] <= EPS * max(1.0, dur[i][k]):
                run_c[k] = -1
                end_c[k][i] = t
                done += 1
                for s in succ[i]:
                    if res[s]:
                        cnt_comm[s] -= 1
                        if cnt_comm[s] == 0:
                            mark_ready_link(s)
                    else:
                        cnt[k][s] -= 1
                        if cnt[k][s] == 0:
                            mark_ready_comp(k, s)
        for j in (1, 2):
            i = run_l[j]
            if i < 0:
                continue
            rem_l[j] -= dt * rm
            if rem_l[j] <= EPS * max(1.0, max(dur[i])):
                run_l[j] = -1
                end_l[i] = t
                done += R
                for s in succ[i]:
                    if res[s]:
                        cnt_comm[s] -= 1
                        if cnt_comm[s] == 0:
                            mark_ready_link(s)
                    else:
                        for k in range(R):
                            cnt[k][s] -= 1
                            if cnt[k][s] == 0:
                                mark_ready_comp(k, s)
    if done != total:
        stuck = [names[i] for i in range(n) if (res[i] and cnt_comm[i] > 0) or (not res[i] and cnt[0][i] > 0)][:3]
        raise MoeschedError(f"schedule deadlocks: {total - done} task instances never ran (e.g. {stuck}); "
                            "a strict order must be consistent with the dependencies")

    rows = []
    res_name = ("compute",) + LINKS
    for i, t_ in enumerate(names):
        a = nodes[t_]
        base = (t_, a["kind"], a["layer"], a["chunk"], a["phase"])
        if res[i] == 0:
            for k in range(R):
                rows.append(base + (k, "compute", start_c[k][i], end_c[k][i]))
        else:
            for k in range(R):
                rows.append(base + (k, res_name[res[i]], start_l[i], end_l[i]))
    df = pd.DataFrame.from_records(rows, columns=COLUMNS)
    return Timeline(df, {"ranks": R, "compute_slowdown": sc, "comm_slowdown": sm, "strict": strict})


def critical_path_us(g: nx.DiGraph) -> float:
    """Length of the longest dependency chain by ``duration_us``, ignoring resources, µs."""
    best: dict[str, float] = {}
    for t in nx.topological_sort(g):
        start = max((best[p] for p in g.predecessors(t)), default=0.0)
        best[t] = start + float(g.nodes[t]["duration_us"])
    return max(best.values(), default=0.0)


def _union(iv: list[list[float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for s, e in sorted(iv):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _length(iv: list[tuple[float, float]]) -> float:
    return sum(e - s for s, e in iv)


def _intersection_length(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    i = j = 0
    tot = 0.0
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if e > s:
            tot += e - s
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tot
