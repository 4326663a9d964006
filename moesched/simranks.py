"""Rank groups ("roles") in the task graph and their simulation.

A graph whose attribute ``roles`` is set (a tuple of role names; a role is a named set of
ranks that run the same tasks: ``"attn"``, ``"expert"``, ``"stage0"``, ...) is simulated
here: :func:`moesched.sim.simulate` dispatches to :func:`run_roles`. Graphs without
the attribute are simulated as one rank's view (:mod:`moesched.sim`); call
:func:`moesched.sim.simulate` for both (this module cannot import sim: no import cycles).

Tasks (node attributes, besides those of :mod:`moesched.graph`):

===============  ==========================================================================
role             the role that runs the task, or ``"all"`` (default): every role runs its
                 own copy (one instance per role, like SPMD ranks)
roles            a *joining* task: the tuple of roles it joins (send/recv between pipeline
                 stages, the A2E transfer of disaggregated inference). One instance; it
                 starts when its predecessors have ended in every joined role, and ends at
                 the same time in all of them
resource         a base name (``"compute"``, ``"comm_intra"``, ``"comm_inter"``, or any
                 name): per role, so ``compute`` of role ``attn`` is ``compute@attn``; a
                 joining task occupies the base resource of every joined role. A name with
                 ``@`` (``"link@a2e"``) is one shared resource, whatever the roles
duration_us      µs; ``duration_by_role_us`` ({role: µs}) overrides it per role
op               collective of a communication task (interference factors, below)
===============  ==========================================================================

Dependencies: an edge p -> s means that in each role where s runs, s waits for p there.
A task may only depend on tasks that run in (one of) its roles: roles wait for one
another only at joining tasks (anything else raises :class:`MoeschedError`).

Simulation: one representative rank per role. Every resource is serial; list scheduling
under priorities (lower first, ties by task creation order then role), in priority order
over the ready instances, an instance starting when all its resources are free (a joining
task on two roles' links may thus be passed by a lower-priority task that needs only one
of them); ``strict=True``: each resource runs exactly its sequence (its instances sorted by
priority). Interference as in :mod:`moesched.sim`, per role: a compute task of role r runs
at the lowest 1/compute_slowdown of the communication tasks running that touch r; a
communication task runs at 1/comm_slowdown while any role it touches computes. A graph
with a single role ``"all"`` gives the timeline of :func:`moesched.sim.simulate` to the
last bit (tested).

The Timeline has one row per task and role: ``rank`` is the role's index in ``roles``,
``role`` its name, ``resource`` the base name (or the shared ``x@y`` name).

Example (two pipeline stages joined by a send/recv)::

    g = new_graph(("stage0", "stage1"))
    add_task(g, "f0", kind="attn_fwd", role="stage0", duration_us=10.0)
    add_task(g, "send", kind="p2p", resource="comm_inter", roles=("stage0", "stage1"),
             duration_us=3.0, deps=["f0"], op="send_recv")
    add_task(g, "f1", kind="attn_fwd", role="stage1", duration_us=5.0, deps=["send"])
    moesched.sim.simulate(g).makespan_us  # 18.0: f0 [0, 10) on stage0, send [10, 13), f1 [13, 18) on stage1
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import networkx as nx
import pandas as pd

from moesched.errors import MoeschedError
from moesched.simloop import EPS, INF

ALL = "all"
COMPUTE = "compute"
#: Timeline columns of a role simulation: :data:`moesched.sim.COLUMNS` and the role's name.
ROLE_COLUMNS = ["task", "kind", "layer", "chunk", "phase", "rank", "resource", "start_us", "end_us", "role"]


def new_graph(roles: Sequence[str], **attrs: object) -> nx.DiGraph:
    """An empty role graph: graph attribute ``roles`` (names, unique, not "all") plus ``attrs``
    (``interference``, ``interference_by_op``, ... as in :mod:`moesched.graph`)."""
    roles = tuple(str(r) for r in roles)
    if not roles or len(set(roles)) != len(roles) or ALL in roles:
        raise MoeschedError(f"roles must be unique names other than 'all', got {list(roles)}")
    return nx.DiGraph(roles=roles, **attrs)


def add_task(g: nx.DiGraph, name: str, *, kind: str, duration_us: float, resource: str = COMPUTE,
             role: str = ALL, roles: Sequence[str] | None = None, deps: Iterable[str] = (),
             phase: str = "fwd", layer: int = -1, chunk: int = 0, **attrs: object) -> None:
    """Add task ``name`` (after ``deps``) to role graph ``g``; ``seq`` is its creation index.
    ``roles`` makes it a joining task (see the module docstring)."""
    if name in g:
        raise MoeschedError(f"task {name} added twice")
    a: dict[str, object] = dict(kind=kind, duration_us=float(duration_us), resource=resource, role=role,
                                phase=phase, layer=layer, chunk=chunk, seq=len(g), **attrs)
    if roles is not None:
        a["roles"] = tuple(roles)
    g.add_node(name, **a)
    for d in deps:
        if d not in g:
            raise MoeschedError(f"task {name} depends on unknown task {d}")
        g.add_edge(d, name)


def has_roles(g: nx.DiGraph) -> bool:
    """Whether ``g`` is a role graph (graph attribute ``roles``)."""
    return bool(g.graph.get("roles"))


@dataclass
class _Inst:
    """One instance of a task: on ``roles`` (role indices), occupying ``res`` (resource ids)."""
    task: int
    roles: tuple[int, ...]
    res: tuple[int, ...]
    dur_us: float
    compute: bool
    key: tuple[float, int, int]  # (priority, task index, first role): the scheduling order
    succ: list[int] = field(default_factory=list)
    npred: int = 0


class _Model:
    """A role graph flattened into instances, resources and dependency counts."""

    def __init__(self, g: nx.DiGraph, prio: Mapping[str, float] | None) -> None:
        self.roles: tuple[str, ...] = tuple(g.graph["roles"])
        if ALL in self.roles or len(set(self.roles)) != len(self.roles):
            raise MoeschedError(f"roles must be unique names other than 'all', got {list(self.roles)}")
        self.names = list(g.nodes)
        self.attrs = [g.nodes[t] for t in self.names]
        index = {t: i for i, t in enumerate(self.names)}
        rix = {r: k for k, r in enumerate(self.roles)}
        self.res_names: list[str] = []
        self._res_id: dict[str, int] = {}
        self.insts: list[_Inst] = []
        self.of: list[dict[int, int]] = []  # task -> role index -> instance
        for i, (t, a) in enumerate(zip(self.names, self.attrs)):
            p = float(a["seq"]) if prio is None else float(prio[t])
            self._instances(i, t, a, p, rix)
        for s, t in enumerate(self.names):
            for p in dict.fromkeys(index[q] for q in g.predecessors(t)):
                self._link(p, s)

    def res_id(self, name: str) -> int:
        if name not in self._res_id:
            self._res_id[name] = len(self.res_names)
            self.res_names.append(name)
        return self._res_id[name]

    def _instances(self, i: int, t: str, a: Mapping[str, object], prio: float, rix: dict[str, int]) -> None:
        if a.get("duration_by_rank_us") is not None:
            raise MoeschedError(f"task {t}: per-rank durations are not supported with roles (use duration_by_role_us)")
        joined = a.get("roles")
        role = str(a.get("role", ALL))
        names = tuple(joined) if joined is not None else self.roles if role == ALL else (role,)  # type: ignore[arg-type]
        bad = [r for r in names if r not in rix]
        if bad or not names or len(set(names)) != len(names):
            raise MoeschedError(f"task {t} names unknown or repeated roles {list(names)} (roles: {list(self.roles)})")
        base = str(a["resource"])
        comp = base.split("@")[0] == COMPUTE
        by_role = a.get("duration_by_role_us") or {}
        groups = [names] if joined is not None else [(r,) for r in names]
        here: dict[int, int] = {}
        for grp in groups:
            res = (self.res_id(base),) if "@" in base else tuple(self.res_id(f"{base}@{r}") for r in grp)
            dur = max(float(by_role.get(r, a["duration_us"])) for r in grp)  # type: ignore[union-attr]
            ks = tuple(rix[r] for r in grp)
            x = len(self.insts)
            self.insts.append(_Inst(i, ks, res, dur, comp, (prio, i, ks[0])))
            for k in ks:
                here[k] = x
        self.of.append(here)

    def _link(self, p: int, s: int) -> None:
        """Edge p -> s: each instance of s waits for p's instances in its roles."""
        for x in dict.fromkeys(self.of[s].values()):
            preds = dict.fromkeys(self.of[p][k] for k in self.insts[x].roles if k in self.of[p])
            if not preds:
                raise MoeschedError(
                    f"task {self.names[s]} (roles {[self.roles[k] for k in self.insts[x].roles]}) depends on "
                    f"{self.names[p]}, which runs in none of them: join roles with a task naming both")
            for y in preds:
                self.insts[y].succ.append(x)
                self.insts[x].npred += 1


def _inverse_rates(m: _Model, g: nx.DiGraph, slowdown: tuple[float, float] | None,
                   op_of_kind: Mapping[str, str]) -> tuple[list[float], list[float]]:
    """Per instance (1/compute slowdown it causes, 1/its own slowdown beside compute), as
    :meth:`moesched.sim.Compiled.inverse_rates` (1.0 for compute instances)."""
    inter = g.graph.get("interference", (1.0, 1.0))
    base = (float(inter[0]), float(inter[1])) if slowdown is None else slowdown
    by_op = {} if slowdown is not None else dict(g.graph.get("interference_by_op") or {})
    inv_c, inv_m = [], []
    for x in m.insts:
        if x.compute:
            pair = (1.0, 1.0)
        else:
            a = m.attrs[x.task]
            op = op_of_kind.get(str(a.get("kind"))) or a.get("op") or "all_to_all"
            pair = tuple(by_op.get(op, base)) if by_op else base
        inv_c.append(1.0 / float(pair[0]))
        inv_m.append(1.0 / float(pair[1]))
    return inv_c, inv_m


class _RoleLoop:
    """List scheduling of :class:`_Model`'s instances (see the module docstring); times µs.
    ``busy[r]``: the instance on resource r or -1; ``rem[x]``: remaining full-speed µs."""

    def __init__(self, m: _Model, inv: tuple[list[float], list[float]], strict: bool) -> None:
        self.m, self.inv_c, self.inv_m, self.strict = m, inv[0], inv[1], strict
        n = len(m.insts)
        self.cnt = [x.npred for x in m.insts]
        self.ready: list[tuple[tuple[float, int, int], int]] = [(x.key, j) for j, x in enumerate(m.insts)
                                                                if x.npred == 0]
        heapq.heapify(self.ready)
        self.busy = [-1] * len(m.res_names)
        self.running: list[int] = []
        self.rem = [0.0] * n
        self.start, self.end = [0.0] * n, [0.0] * n
        self.t, self.done = 0.0, 0
        self.finished = [False] * n
        if strict:  # each resource's sequence, and how far it has got
            seqs: list[list[int]] = [[] for _ in m.res_names]
            for j in sorted(range(n), key=lambda j: m.insts[j].key):
                for r in m.insts[j].res:
                    seqs[r].append(j)
            self.seqs, self.ptr = seqs, [0] * len(seqs)

    def can_start(self, j: int) -> bool:
        for r in self.m.insts[j].res:
            if self.busy[r] >= 0 or (self.strict and self.seqs[r][self.ptr[r]] != j):
                return False
        return True

    def start_ready(self) -> None:
        """Start every ready instance whose resources are free, in priority order."""
        kept = []
        while self.ready:
            item = heapq.heappop(self.ready)
            j = item[1]
            if not self.can_start(j):
                kept.append(item)
                continue
            for r in self.m.insts[j].res:
                self.busy[r] = j
                if self.strict:
                    self.ptr[r] += 1
            self.running.append(j)
            self.rem[j] = self.m.insts[j].dur_us
            self.start[j] = self.t
        for item in kept:
            heapq.heappush(self.ready, item)

    def rates(self) -> list[float]:
        """Rate of each running instance (same order as ``running``) under interference."""
        insts = self.m.insts
        computing = {k for j in self.running if insts[j].compute for k in insts[j].roles}
        slow: dict[int, float] = {}  # role -> lowest compute rate the running collectives allow
        for j in self.running:
            if not insts[j].compute:
                for k in insts[j].roles:
                    slow[k] = min(slow.get(k, INF), self.inv_c[j])
        out = []
        for j in self.running:
            x = insts[j]
            if x.compute:
                out.append(slow.get(x.roles[0], 1.0))
            else:
                out.append(self.inv_m[j] if any(k in computing for k in x.roles) else 1.0)
        return out

    def advance(self) -> None:
        """Move to the next end; retire the instances done and release their successors."""
        rate = self.rates()
        dt = INF
        for j, rt in zip(self.running, rate):
            if self.rem[j] / rt < dt:
                dt = self.rem[j] / rt
        self.t += dt
        still = []
        for j, rt in zip(self.running, rate):
            self.rem[j] -= dt * rt
            d = self.m.insts[j].dur_us
            if self.rem[j] > EPS * (d if d > 1.0 else 1.0):
                still.append(j)
                continue
            self.end[j] = self.t
            self.done += 1
            self.finished[j] = True
            for r in self.m.insts[j].res:
                self.busy[r] = -1
            for s in self.m.insts[j].succ:
                self.cnt[s] -= 1
                if self.cnt[s] == 0:
                    heapq.heappush(self.ready, (self.m.insts[s].key, s))
        self.running = still

    def run(self) -> float:
        """Simulate to the end; return the makespan, µs."""
        while True:
            self.start_ready()
            if not self.running:
                break
            self.advance()
        if self.done != len(self.m.insts):
            stuck = sorted({self.m.names[x.task] for j, x in enumerate(self.m.insts) if not self.finished[j]})
            raise MoeschedError(f"{len(self.m.insts) - self.done} task instances never ran (the order "
                                f"contradicts the dependencies?): {', '.join(stuck[:5])}")
        return self.t


@dataclass
class RoleRun:
    """A role simulation: ``rows()`` the timeline's DataFrame (:data:`ROLE_COLUMNS`),
    ``makespan_us`` the step time (µs), ``meta`` how it was made.
    :func:`moesched.sim.simulate` wraps it into a Timeline."""
    rows: Callable[[], pd.DataFrame]
    makespan_us: float
    meta: dict


def run_roles(g: nx.DiGraph, priority: Mapping[str, float] | None = None, *, strict: bool = False,
              compute_slowdown: float | None = None, comm_slowdown: float | None = None,
              op_of_kind: Mapping[str, str] | None = None) -> RoleRun:
    """Simulate role graph ``g`` (one representative rank per role); arguments as
    :func:`moesched.sim.simulate`; ``op_of_kind``: the collective of communication kinds
    whose ``op`` attribute does not say (:data:`moesched.sim.OP_OF_KIND`). Call
    :func:`moesched.sim.simulate`, which calls this, to get a Timeline."""
    if strict and g.graph.get("host_lag_us") is not None:
        raise MoeschedError("the host model (strict simulation of a graph with host costs) is not supported "
                            "in graphs with roles")
    m = _Model(g, priority)
    over = compute_slowdown is not None or comm_slowdown is not None
    inter = g.graph.get("interference", (1.0, 1.0))
    sc = float(inter[0]) if compute_slowdown is None else float(compute_slowdown)
    sm = float(inter[1]) if comm_slowdown is None else float(comm_slowdown)
    loop = _RoleLoop(m, _inverse_rates(m, g, (sc, sm) if over else None, op_of_kind or {}), strict)
    ms = loop.run()

    def rows() -> pd.DataFrame:
        recs = []
        for j, x in enumerate(m.insts):
            a = m.attrs[x.task]
            base = (m.names[x.task], a.get("kind"), a.get("layer", -1), a.get("chunk", 0), a.get("phase", "fwd"))
            res = str(a["resource"])
            for k in x.roles:
                recs.append(base + (k, res, loop.start[j], loop.end[j], m.roles[k]))
        return pd.DataFrame.from_records(recs, columns=ROLE_COLUMNS)

    meta = {"roles": m.roles, "compute_slowdown": sc, "comm_slowdown": sm, "strict": strict}
    return RoleRun(rows, ms, meta)
