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
from typing import Callable, Mapping, Sequence

import networkx as nx
import pandas as pd

from moesched.errors import MoeschedError

LINKS = ("comm_intra", "comm_inter")
#: Resource name -> index in Compiled.res.
RES_INDEX = {"compute": 0, "comm_intra": 1, "comm_inter": 2}
COLUMNS = ["task", "kind", "layer", "chunk", "phase", "rank", "resource", "start_us", "end_us"]


class Timeline:
    """Result of a simulation (or a measurement).

    df: one row per task and rank: task, kind, layer, chunk, phase, rank, resource,
        start_us, end_us (built lazily for simulated timelines).
    meta: free-form facts about how it was made.
    """

    def __init__(self, df: pd.DataFrame | None, meta: dict | None = None, *,
                 builder: Callable[[], pd.DataFrame] | None = None, makespan_us: float | None = None) -> None:
        self._df, self._builder, self._makespan = df, builder, makespan_us
        self.meta = dict(meta or {})

    @property
    def df(self) -> pd.DataFrame:
        if self._df is None:
            self._df = self._builder() if self._builder else pd.DataFrame(columns=COLUMNS)
        return self._df

    @property
    def makespan_us(self) -> float:
        """Step time, µs: the last end (times start at 0 for simulated timelines)."""
        if self._makespan is not None:
            return self._makespan
        return float(self.df["end_us"].max() - min(0.0, float(self.df["start_us"].min()))) if len(self.df) else 0.0

    def busy_us(self, rank: int = 0) -> dict[str, float]:
        """Busy time per resource on ``rank``, µs."""
        d = self.df[self.df["rank"] == rank]
        return {r: float((g["end_us"] - g["start_us"]).sum()) for r, g in d.groupby("resource")}

    def exposed_comm_us(self, rank: int = 0) -> float:
        """Time on ``rank`` during which some collective runs and compute is idle, µs."""
        d = self.df[self.df["rank"] == rank]
        comm = union_intervals(d.loc[d["resource"] != "compute", ["start_us", "end_us"]].to_numpy().tolist())
        comp = union_intervals(d.loc[d["resource"] == "compute", ["start_us", "end_us"]].to_numpy().tolist())
        return intervals_length(comm) - intersection_length(comm, comp)

    def order(self, rank: int = 0) -> list[str]:
        """Tasks of ``rank`` by start time: an issue order the executor can replay."""
        d = self.df[self.df["rank"] == rank]
        return d.sort_values(["start_us", "end_us"], kind="stable")["task"].tolist()


class Compiled:
    """A task graph flattened into arrays once, to simulate under many priorities.

    Task i: names[i]; res[i] its resource (0 compute, 1 comm_intra, 2 comm_inter); dur[i]
    its duration per simulated rank (µs); preds[i], succ[i] its predecessors and
    successors (tuples of indices, in edge insertion order); npred[i] the completions it
    waits for; seq[i] its creation order; kind[i], phase[i], layer[i], layers[i] (None
    unless a gradient chunk) for priority rules; attrs[i] its full attribute dict.
    ``run`` is the event loop; ``simulate`` wraps it into a Timeline.

    ``Compiled(g)`` compiles a DiGraph. :meth:`from_columns` (what
    :func:`moesched.graph.build_compiled` uses) takes the columns directly and makes
    ``attrs`` and ``graph`` only when they are read.
    """

    def __init__(self, g: nx.DiGraph) -> None:
        items = list(g.nodes(data=True))  # one pass over networkx's views
        names = [t for t, _ in items]
        attrs = [a for _, a in items]
        index = {t: i for i, t in enumerate(names)}
        pred, succ = g.pred, g.succ
        self.names, self.graph_attrs = names, g.graph
        self.preds = [tuple([index[p] for p in pred[t]]) for t in names]
        self.succ = [tuple([index[s] for s in succ[t]]) for t in names]
        R = self.ranks = int(g.graph.get("ranks", 1))
        self.res = [RES_INDEX[a["resource"]] for a in attrs]
        self.seq = [float(a["seq"]) for a in attrs]
        self.kind = [a.get("kind") for a in attrs]
        self.phase = [a.get("phase") for a in attrs]
        self.layer = [a.get("layer") for a in attrs]
        self.layers = [a.get("layers") for a in attrs]
        dur: list[list[float]] = []
        for t, a in items:
            byr = a.get("duration_by_rank_us")
            d = [float(x) for x in byr] if byr is not None else [float(a["duration_us"])] * R
            if len(d) != R:
                raise MoeschedError(f"task {t} has {len(d)} per-rank durations for {R} ranks")
            dur.append(d)
        self._dur: list[list[float]] | None = dur
        self._dur1: list[float] | None = [d[0] for d in dur] if R == 1 else None
        self.loss = index.get("loss", -1)
        self._finish(g.graph)
        self._attrs: list[dict] | None = attrs
        self._index: dict[str, int] | None = index
        self._graph: nx.DiGraph | None = g
        self._make_attrs: Callable[[], list[dict]] | None = None
        self._make_graph: Callable[[], nx.DiGraph] | None = None

    @classmethod
    def from_columns(cls, *, names: list[str], res: list[int], dur: list[float], kind: list[str], phase: list[str],
                     layer: list[int], layers: list[tuple[int, ...] | None], preds: list[tuple[int, ...]],
                     succ: list[tuple[int, ...]], loss: int, graph_attrs: dict,
                     make_attrs: Callable[[], list[dict]], make_graph: Callable[[], nx.DiGraph]) -> "Compiled":
        """Compile one-rank columns (task i created i-th, so ``seq[i] == i``; ``dur`` one µs
        value per task; ``loss`` the loss task's index or -1); ``make_attrs()`` and
        ``make_graph()`` give the attribute dicts and the equal DiGraph on first use. The
        lists are kept, not copied."""
        c = cls.__new__(cls)
        c.names, c.graph_attrs, c.preds, c.succ = names, graph_attrs, preds, succ
        c.ranks = 1
        c.res, c.kind, c.phase, c.layer, c.layers = res, kind, phase, layer, layers
        c.seq = [float(i) for i in range(len(names))]
        c._dur, c._dur1 = None, dur
        c.loss = loss
        c._finish(graph_attrs)
        c._attrs, c._index, c._graph = None, None, None
        c._make_attrs, c._make_graph = make_attrs, make_graph
        return c

    def _finish(self, graph_attrs: Mapping[str, object]) -> None:
        inter = graph_attrs.get("interference", (1.0, 1.0))
        self.slowdown = (float(inter[0]), float(inter[1]))  # type: ignore[index]
        # A collective waits for each compute predecessor on every rank (R completions) and
        # for each collective predecessor once; a compute task counts its predecessors per rank.
        R, res = self.ranks, self.res
        if R == 1:
            self.npred = [len(ps) for ps in self.preds]
        else:
            self.npred = [sum(R if res[p] == 0 else 1 for p in ps) if res[i] else len(ps)
                          for i, ps in enumerate(self.preds)]

    @property
    def dur(self) -> list[list[float]]:
        """Durations per task and simulated rank, µs."""
        if self._dur is None:
            assert self._dur1 is not None
            self._dur = [[d] for d in self._dur1]
        return self._dur

    @property
    def attrs(self) -> list[dict]:
        """Each task's attribute dict (the DiGraph's node data)."""
        if self._attrs is None:
            assert self._make_attrs is not None
            self._attrs = self._make_attrs()
        return self._attrs

    @property
    def graph(self) -> nx.DiGraph:
        """The networkx DiGraph (built on first use when compiled from columns)."""
        if self._graph is None:
            assert self._make_graph is not None
            self._graph = self._make_graph()
        return self._graph

    @property
    def index(self) -> dict[str, int]:
        """Task name -> index."""
        if self._index is None:
            self._index = {t: i for i, t in enumerate(self.names)}
        return self._index

    def vector(self, priority: Mapping[str, float] | Sequence[float] | None) -> list[float]:
        """Priorities aligned with ``names`` (``seq`` when None)."""
        if priority is None:
            return list(self.seq)
        if isinstance(priority, (list, tuple)):
            return [float(x) for x in priority]
        return [float(priority[t]) for t in self.names]

    def run(self, priority: Mapping[str, float] | Sequence[float] | None = None, *, strict: bool = False,
            slowdown: tuple[float, float] | None = None,
            durations: Sequence[float] | None = None) -> tuple[list[list[float]], list[list[float]], float]:
        """Simulate; return (start[rank][task], end[rank][task], makespan), times in µs.

        slowdown: (compute, comm) interference factors; default the graph's.
        durations: one µs value per task overriding the graph's (all ranks alike).
        """
        prio = self.vector(priority)
        sc, sm = self.slowdown if slowdown is None else slowdown
        if self.ranks == 1 and not strict:  # the solver's case: one simulated rank, list scheduling
            d1 = self._dur1 if durations is None else [float(d) for d in durations]
            assert d1 is not None
            st, en, ms = _event_loop_1(self.res, d1, self.succ, self.npred, prio, float(sc), float(sm), self.names)
            return [st], [en], ms
        dur = self.dur if durations is None else [[float(d)] * self.ranks for d in durations]
        return _event_loop(self.res, dur, self.succ, self.npred, prio, self.ranks, float(sc), float(sm), strict,
                           self.names)

    def makespan_us(self, priority: Mapping[str, float] | Sequence[float] | None = None, *, strict: bool = False,
                    slowdown: tuple[float, float] | None = None, durations: Sequence[float] | None = None,
                    starts: list[float] | None = None) -> float:
        """Step time in µs; ``starts``, if given, is filled with rank 0's start times."""
        st, _, ms = self.run(priority, strict=strict, slowdown=slowdown, durations=durations)
        if starts is not None:
            starts[:] = st[0]
        return ms

    def loss_start_us(self, starts: Sequence[float]) -> float:
        """End of forward: the start of the loss task (every forward task is its
        ancestor and every backward task its descendant, so nothing runs then)."""
        return starts[self.loss] if self.loss >= 0 else 0.0

    def timeline(self, start: list[list[float]], end: list[list[float]], makespan: float,
                 meta: dict) -> "Timeline":
        """Wrap a run into a Timeline whose DataFrame is built on first use."""
        def rows() -> pd.DataFrame:
            res_name = ("compute",) + LINKS
            recs = []
            for i, (t, a) in enumerate(zip(self.names, self.attrs)):
                base = (t, a["kind"], a["layer"], a["chunk"], a["phase"])
                for k in range(self.ranks):
                    recs.append(base + (k, res_name[self.res[i]], start[k][i], end[k][i]))
            return pd.DataFrame.from_records(recs, columns=COLUMNS)
        return Timeline(None, meta, builder=rows, makespan_us=makespan)


def simulate(g: nx.DiGraph, priority: Mapping[str, float] | None = None, *, strict: bool = False,
             compute_slowdown: float | None = None, comm_slowdown: float | None = None) -> Timeline:
    """Simulate graph ``g`` (see :mod:`moesched.graph`) and return its Timeline.

    priority: task -> number, lower first; default the graph's creation order ``seq``.
    compute_slowdown, comm_slowdown: interference factors; default those stored in the
    graph attribute ``interference`` (set by graph.build from the profile), else 1.0.
    """
    c = Compiled(g)
    sc = c.slowdown[0] if compute_slowdown is None else float(compute_slowdown)
    sm = c.slowdown[1] if comm_slowdown is None else float(comm_slowdown)
    start, end, ms = c.run(priority, strict=strict, slowdown=(sc, sm))
    return c.timeline(start, end, ms, {"ranks": c.ranks, "compute_slowdown": sc, "comm_slowdown": sm,
                                       "strict": strict})


def _event_loop(res: list[int], dur: list[list[float]], succ: Sequence[Sequence[int]], npred: list[int],
                prio: list[float], R: int, sc: float, sm: float, strict: bool,
                names: list[str]) -> tuple[list[list[float]], list[list[float]], float]:
    """List scheduling with rate-based interference; see the module docstring."""
    n = len(res)
    cnt_comm = [npred[i] if res[i] else 0 for i in range(n)]
    cnt = [[0 if res[i] else npred[i] for i in range(n)] for _ in range(R)]
    heaps: list[list[list[tuple[float, int]]]] = [[[] for _ in range(3)] for _ in range(R)]  # [rank][res]
    ready = [[False] * n for _ in range(R)]  # strict mode; collectives use rank 0's row
    if strict:
        seqs = [sorted((i for i in range(n) if res[i] == r), key=lambda i: (prio[i], i)) for r in range(3)]
        ptr = [[0, 0, 0] for _ in range(R)]

    def push(k: int, i: int) -> None:
        if strict:
            ready[k][i] = True
        else:
            heapq.heappush(heaps[k][res[i]], (prio[i], i))

    for i in range(n):
        if res[i]:
            if cnt_comm[i] == 0:
                push(0, i)
        else:
            for k in range(R):
                if cnt[k][i] == 0:
                    push(k, i)
    start = [[0.0] * n for _ in range(R)]
    end = [[0.0] * n for _ in range(R)]
    run_c = [-1] * R
    rem_c = [0.0] * R
    run_l = [-1, -1, -1]
    rem_l = [0.0, 0.0, 0.0]
    t = 0.0
    done = 0
    EPS = 1e-9
    rc_on, rm_on = 1.0 / sc, 1.0 / sm
    ranks = range(R)
    while True:
        for k in ranks:  # start compute tasks
            if run_c[k] < 0:
                if strict:
                    seq, p = seqs[0], ptr[k][0]
                    if p < len(seq) and ready[k][seq[p]]:
                        i = seq[p]
                        ptr[k][0] = p + 1
                        run_c[k], rem_c[k] = i, dur[i][k]
                        start[k][i] = t
                elif heaps[k][0]:
                    i = heapq.heappop(heaps[k][0])[1]
                    run_c[k], rem_c[k] = i, dur[i][k]
                    start[k][i] = t
        for j in (1, 2):  # start collectives (one per link, all ranks at once)
            if run_l[j] < 0:
                i = -1
                if strict:
                    seq, p = seqs[j], ptr[0][j]
                    if p < len(seq) and ready[0][seq[p]]:
                        i = seq[p]
                        ptr[0][j] = p + 1
                elif heaps[0][j]:
                    i = heapq.heappop(heaps[0][j])[1]
                if i >= 0:
                    run_l[j], rem_l[j] = i, max(dur[i])
                    for k in ranks:
                        start[k][i] = t
        comp_on = False
        for k in ranks:
            if run_c[k] >= 0:
                comp_on = True
                break
        comm_on = run_l[1] >= 0 or run_l[2] >= 0
        if not comp_on and not comm_on:
            break
        rc = rc_on if comm_on else 1.0
        rm = rm_on if comp_on else 1.0
        dt = float("inf")
        for k in ranks:
            if run_c[k] >= 0 and rem_c[k] / rc < dt:
                dt = rem_c[k] / rc
        for j in (1, 2):
            if run_l[j] >= 0 and rem_l[j] / rm < dt:
                dt = rem_l[j] / rm
        t += dt
        for k in ranks:  # finish compute tasks
            i = run_c[k]
            if i < 0:
                continue
            rem_c[k] -= dt * rc
            d = dur[i][k]
            if rem_c[k] <= EPS * (d if d > 1.0 else 1.0):
                run_c[k] = -1
                end[k][i] = t
                done += 1
                for s in succ[i]:
                    if res[s]:
                        cnt_comm[s] -= 1
                        if cnt_comm[s] == 0:
                            push(0, s)
                    else:
                        cnt[k][s] -= 1
                        if cnt[k][s] == 0:
                            push(k, s)
        for j in (1, 2):  # finish collectives
            i = run_l[j]
            if i < 0:
                continue
            rem_l[j] -= dt * rm
            d = max(dur[i])
            if rem_l[j] <= EPS * (d if d > 1.0 else 1.0):
                run_l[j] = -1
                done += R
                for k in ranks:
                    end[k][i] = t
                for s in succ[i]:
                    if res[s]:
                        cnt_comm[s] -= 1
                        if cnt_comm[s] == 0:
                            push(0, s)
                    else:
                        for k in ranks:
                            cnt[k][s] -= 1
                            if cnt[k][s] == 0:
                                push(k, s)
    if done != n * R:
        stuck = [names[i] for i in range(n) if (cnt_comm[i] > 0 if res[i] else cnt[0][i] > 0)][:3]
        raise MoeschedError(f"schedule deadlocks: {n * R - done} task instances never ran (e.g. {stuck}); "
                            "a strict order must be consistent with the dependencies")
    return start, end, t


def _event_loop_1(res: list[int], dur: list[float], succ: Sequence[Sequence[int]], npred: list[int], prio: list[float],
                  sc: float, sm: float, names: list[str]) -> tuple[list[float], list[float], float]:
    """:func:`_event_loop` for one rank and ``strict=False``, with the same arithmetic in the
    same order (so the same times to the last bit), without the per-rank lists. Tasks
    enter the heaps by their rank in (priority, index) order, the order the general
    loop's (priority, index) tuples give. Returns (start, end, makespan), µs."""
    n = len(res)
    order = sorted(range(n), key=prio.__getitem__)  # stable: ties by index
    pos = [0] * n
    for r, i in enumerate(order):
        pos[i] = r
    cnt = list(npred)
    heaps: tuple[list[int], list[int], list[int]] = ([], [], [])
    for i in range(n):
        if cnt[i] == 0:
            heaps[res[i]].append(pos[i])
    for h in heaps:
        heapq.heapify(h)
    hc, h1, h2 = heaps
    push, pop = heapq.heappush, heapq.heappop
    start = [0.0] * n
    end = [0.0] * n
    run_c = run_1 = run_2 = -1
    rem_c = rem_1 = rem_2 = 0.0
    t = 0.0
    done = 0
    EPS = 1e-9
    rc_on, rm_on = 1.0 / sc, 1.0 / sm
    inf = float("inf")
    while True:
        if run_c < 0 and hc:
            run_c = order[pop(hc)]
            rem_c = dur[run_c]
            start[run_c] = t
        if run_1 < 0 and h1:
            run_1 = order[pop(h1)]
            rem_1 = dur[run_1]
            start[run_1] = t
        if run_2 < 0 and h2:
            run_2 = order[pop(h2)]
            rem_2 = dur[run_2]
            start[run_2] = t
        comp_on = run_c >= 0
        comm_on = run_1 >= 0 or run_2 >= 0
        if not comp_on and not comm_on:
            break
        if comp_on + (run_1 >= 0) + (run_2 >= 0) == 1:
            # One task runs alone, so both rates are 1.0 and it ends after its remaining µs
            # (dt = rem / 1.0 below). Chain such steps while exactly one resource has work.
            i, rem = (run_c, rem_c) if comp_on else (run_1, rem_1) if run_1 >= 0 else (run_2, rem_2)
            while True:
                t += rem
                end[i] = t
                done += 1
                for s in succ[i]:
                    cnt[s] -= 1
                    if cnt[s] == 0:
                        push(heaps[res[s]], pos[s])
                if hc and not h1 and not h2:
                    h = hc
                elif h1 and not hc and not h2:
                    h = h1
                elif h2 and not hc and not h1:
                    h = h2
                else:
                    break
                i = order[pop(h)]
                rem = dur[i]
                start[i] = t
            run_c = run_1 = run_2 = -1
            continue
        rc = rc_on if comm_on else 1.0
        rm = rm_on if comp_on else 1.0
        dt = inf
        if comp_on and rem_c / rc < dt:
            dt = rem_c / rc
        if run_1 >= 0 and rem_1 / rm < dt:
            dt = rem_1 / rm
        if run_2 >= 0 and rem_2 / rm < dt:
            dt = rem_2 / rm
        t += dt
        fin = []
        if comp_on:
            rem_c -= dt * rc
            d = dur[run_c]
            if rem_c <= EPS * (d if d > 1.0 else 1.0):
                fin.append(run_c)
                run_c = -1
        if run_1 >= 0:
            rem_1 -= dt * rm
            d = dur[run_1]
            if rem_1 <= EPS * (d if d > 1.0 else 1.0):
                fin.append(run_1)
                run_1 = -1
        if run_2 >= 0:
            rem_2 -= dt * rm
            d = dur[run_2]
            if rem_2 <= EPS * (d if d > 1.0 else 1.0):
                fin.append(run_2)
                run_2 = -1
        for i in fin:
            end[i] = t
            done += 1
            for s in succ[i]:
                cnt[s] -= 1
                if cnt[s] == 0:
                    push(heaps[res[s]], pos[s])
    if done != n:
        stuck = [names[i] for i in range(n) if cnt[i] > 0][:3]
        raise MoeschedError(f"schedule deadlocks: {n - done} task instances never ran (e.g. {stuck}); "
                            "a strict order must be consistent with the dependencies")
    return start, end, t


def critical_path_us(g: nx.DiGraph) -> float:
    """Length of the longest dependency chain by ``duration_us``, ignoring resources, µs."""
    best: dict[str, float] = {}
    for t in nx.topological_sort(g):
        start = max((best[p] for p in g.predecessors(t)), default=0.0)
        best[t] = start + float(g.nodes[t]["duration_us"])
    return max(best.values(), default=0.0)


def union_intervals(iv: list[list[float]]) -> list[tuple[float, float]]:
    """Sorted disjoint union of [start, end) intervals (µs); empty ones dropped."""
    out: list[tuple[float, float]] = []
    for s, e in sorted(iv):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def intervals_length(iv: list[tuple[float, float]]) -> float:
    return sum(e - s for s, e in iv)


def intersection_length(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
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
