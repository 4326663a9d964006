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

Interference (the profile's factors): while a collective runs, compute progresses at
1/compute_slowdown of its speed; while any rank computes, a collective progresses at
1/comm_slowdown. The factors may differ by collective (graph attribute
``interference_by_op``: {"all_reduce": (compute, comm)}; ``all_to_all`` for every
all-to-all, ``all_reduce`` for gradient chunks): an all-reduce reduces on the SMs that the
GEMMs use, an all-to-all only copies. Progress is tracked as remaining full-speed µs, so a
task that overlaps only in part is stretched only for that part.

Host (strict simulations of graphs whose profile measured host costs, :mod:`moesched.host`):
each rank's host first sets the step up (``host_setup_us``), then issues the tasks in
priority order, taking ``host_us`` per task; a compute
task starts no earlier than ``host_lag_us`` after its issue starts and ends no earlier than
``host_lag_us`` after it ends, a collective starts ``host_lag_us`` after its issue ended on
every rank, and a dispatch's issue waits for its attention task's end on the GPU. The step
ends ``host_finish_us`` after its last task (the loss read back and averaged).

Per-rank costs: a node may carry ``duration_by_rank_us`` (one value per simulated rank);
the graph attribute ``ranks`` sets how many ranks are simulated (default 1: all ranks of a
symmetric step are identical). A collective takes the longest of its ranks' durations.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import networkx as nx
import pandas as pd

from moesched import simranks
from moesched.errors import MoeschedError
from moesched.kinds import TP_OP_OF_KIND
from moesched.simloop import event_loop, event_loop_1

LINKS = ("comm_intra", "comm_inter")
#: Collective of each communication kind (interference factors are per collective).
OP_OF_KIND = {"grad_ar": "all_reduce", **TP_OP_OF_KIND}
#: Resource name -> index in Compiled.res.
RES_INDEX = {"compute": 0, "comm_intra": 1, "comm_inter": 2}
COLUMNS = ["task", "kind", "layer", "chunk", "phase", "rank", "resource", "start_us", "end_us"]
#: Host issue intervals of a measured timeline: thread "main", "compute" or "comm"; wait_us
#: is the part of the interval the host spent blocked on routing counts (µs).
HOST_COLUMNS = ["task", "rank", "thread", "start_us", "end_us", "wait_us"]


class Timeline:
    """Result of a simulation (or a measurement).

    df: one row per task and rank: task, kind, layer, chunk, phase, rank, resource,
        start_us, end_us (built lazily for simulated timelines).
    meta: free-form facts about how it was made.
    host: measured timelines only: when the host issued each task (HOST_COLUMNS, µs from
        the step's start on the host clock), or None.
    """

    def __init__(self, df: pd.DataFrame | None, meta: dict | None = None, *,
                 builder: Callable[[], pd.DataFrame] | None = None, makespan_us: float | None = None,
                 host: pd.DataFrame | None = None) -> None:
        self._df, self._builder, self._makespan = df, builder, makespan_us
        self.meta = dict(meta or {})
        self.host = host

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
        self.host = _host_columns(g.graph, attrs, self.preds, self.res, R)
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
        c.host = None
        c._finish(graph_attrs)
        c._attrs, c._index, c._graph = None, None, None
        c._make_attrs, c._make_graph = make_attrs, make_graph
        return c

    def _finish(self, graph_attrs: Mapping[str, object]) -> None:
        inter = graph_attrs.get("interference", (1.0, 1.0))
        self.slowdown = (float(inter[0]), float(inter[1]))  # type: ignore[index]
        by_op = dict(graph_attrs.get("interference_by_op") or {})  # type: ignore[call-overload]
        self.by_op = {str(k): (float(v[0]), float(v[1])) for k, v in by_op.items()}
        self._inv: tuple[list[float], list[float]] | None = None
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

    def inverse_rates(self, slowdown: tuple[float, float] | None = None) -> tuple[list[float], list[float]]:
        """Per task (inv_c, inv_m): 1 / the compute slowdown a collective causes, 1 / its
        own slowdown beside compute (1.0 for compute tasks). ``slowdown``: one (compute,
        comm) pair for every collective, instead of the graph's factors."""
        if slowdown is None and self._inv is not None:
            return self._inv
        n = len(self.res)
        if slowdown is not None or not self.by_op:
            sc, sm = self.slowdown if slowdown is None else slowdown
            inv = ([1.0 / float(sc)] * n, [1.0 / float(sm)] * n)
        else:
            pairs = [self.by_op.get(OP_OF_KIND.get(k, "all_to_all"), self.slowdown) if r else (1.0, 1.0)
                     for k, r in zip(self.kind, self.res)]
            inv = ([1.0 / p[0] for p in pairs], [1.0 / p[1] for p in pairs])
        if slowdown is None:
            self._inv = inv
        return inv

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

        slowdown: one (compute, comm) pair of interference factors for every collective;
            default the graph's (per collective where it has ``interference_by_op``).
        durations: one µs value per task overriding the graph's (all ranks alike); the host
            model (strict mode, graphs with host costs) applies only without them.
        """
        prio = self.vector(priority)
        inv_c, inv_m = self.inverse_rates(slowdown)
        if self.ranks == 1 and not strict:  # the solver's case: one simulated rank, list scheduling
            d1 = self._dur1 if durations is None else [float(d) for d in durations]
            assert d1 is not None
            st, en, ms = event_loop_1(self.res, d1, self.succ, self.npred, prio, inv_c, inv_m, self.names)
            return [st], [en], ms
        dur = self.dur if durations is None else [[float(d)] * self.ranks for d in durations]
        host = None
        if strict and self.host is not None and durations is None:  # overridden durations: no host
            seq = self.seq
            host = (self.host[0], sorted(range(len(prio)), key=lambda i: (prio[i], seq[i])), self.host[1],
                    self.host[2], self.host[3], self.host[4])
        return event_loop(self.res, dur, self.succ, self.npred, prio, self.ranks, inv_c, inv_m, strict,
                           self.names, host)

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


def _host_columns(graph: Mapping[str, object], attrs: list[dict], preds: list[tuple[int, ...]], res: list[int],
                  R: int) -> tuple[list[list[float]], list[tuple[int, ...]], float, float, float] | None:
    """The host model's inputs (:mod:`moesched.host`) when the graph has ``host_lag_us``:
    host µs per task and rank, the compute tasks whose GPU end each task's issue waits for
    (the first hop of a dispatch waits for its routing counts), the lag, and the step's
    setup before the first issue and finish after the last task, in µs."""
    lag_us = graph.get("host_lag_us")
    if lag_us is None:
        return None
    cost = [[float(a.get("host_us", 0.0))] * R for a in attrs]
    waits = [tuple(p for p in ps if res[p] == 0) if a["kind"] == "dispatch" and a.get("hop") in (None, "intra")
             else () for a, ps in zip(attrs, preds)]
    return (cost, waits, float(lag_us), float(graph.get("host_setup_us", 0.0)),  # type: ignore[arg-type]
            float(graph.get("host_finish_us", 0.0)))  # type: ignore[arg-type]


def simulate(g: nx.DiGraph, priority: Mapping[str, float] | None = None, *, strict: bool = False,
             compute_slowdown: float | None = None, comm_slowdown: float | None = None) -> Timeline:
    """Simulate graph ``g`` (see :mod:`moesched.graph`) and return its Timeline.

    priority: task -> number, lower first; default the graph's creation order ``seq``.
    compute_slowdown, comm_slowdown: interference factors for every collective; default
    those stored in the graph attributes ``interference`` and ``interference_by_op`` (set
    by graph.build from the profile), else 1.0.

    A graph with rank groups (graph attribute ``roles``) is simulated by
    :func:`moesched.simranks.run_roles`: one representative rank per role.
    """
    if simranks.has_roles(g):
        run = simranks.run_roles(g, priority, strict=strict, compute_slowdown=compute_slowdown,
                                 comm_slowdown=comm_slowdown, op_of_kind=OP_OF_KIND)
        return Timeline(None, run.meta, builder=run.rows, makespan_us=run.makespan_us)
    c = Compiled(g)
    over = compute_slowdown is not None or comm_slowdown is not None
    sc = c.slowdown[0] if compute_slowdown is None else float(compute_slowdown)
    sm = c.slowdown[1] if comm_slowdown is None else float(comm_slowdown)
    start, end, ms = c.run(priority, strict=strict, slowdown=(sc, sm) if over else None)
    meta = {"ranks": c.ranks, "compute_slowdown": sc, "comm_slowdown": sm, "strict": strict}
    if c.by_op and not over:
        meta["interference_by_op"] = dict(c.by_op)
    return c.timeline(start, end, ms, meta)


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


def uncovered_intervals(comm: list[tuple[float, float]], comp: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The parts of the sorted disjoint intervals ``comm`` that no interval of the sorted
    disjoint ``comp`` covers (one pass over both; same unit as the inputs): exposed
    communication when ``comm`` is a union of transfers and ``comp`` one of compute."""
    out: list[tuple[float, float]] = []
    j = 0
    for s, e in comm:
        cur = s
        while j < len(comp) and comp[j][1] <= cur:
            j += 1
        k = j
        while k < len(comp) and comp[k][0] < e:
            if comp[k][0] > cur:
                out.append((cur, comp[k][0]))
            cur = max(cur, comp[k][1])
            k += 1
        if cur < e:
            out.append((cur, e))
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
