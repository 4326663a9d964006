"""Exact optimal task orders for small instances with OR-Tools CP-SAT.

For FIXED knobs (one built task graph), CP-SAT finds the order of tasks on each serial
resource minimising the makespan: one fixed-size interval per task (durations rounded
to integer ticks, ``TICK_US`` = 0.1 µs), a no-overlap constraint per serial resource
(``compute``, ``comm_intra``, ``comm_inter``), ``end(a) <= start(b)`` for every graph edge,
makespan = max end, minimised. It is warm-started (``AddHint``) with the list schedule of
the heuristic priority, whose makespan is also the horizon.

Interference cannot be expressed here (a task's duration would depend on what else
runs), so every comparison is made with interference factors 1.0: the heuristic's
makespan is its list schedule with compute_slowdown = comm_slowdown = 1.0 on the same
tick-rounded durations. The heuristic gap is per knob setting: heuristic list schedule
vs the CP-SAT optimum over orders for the same graph.

Only this module imports ortools, and only inside functions: import it explicitly
(``moesched.solve`` does not), since the GPU machine has no ortools.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Mapping

import networkx as nx

from moesched.sim import Compiled

TICK_US = 0.1
RESOURCES = (0, 1, 2)  # compute, comm_intra, comm_inter (moesched.sim.Compiled indices)


@dataclass
class CpSatResult:
    """status: "optimal", "feasible" or "unknown" (no solution within the limit);
    makespan_us: best makespan found; lower_bound_us: the solver's proven bound
    (BestObjectiveBound); heuristic_us: the warm start's makespan (interference 1.0);
    order: tasks by CP-SAT start time (a topological order); starts_us: task -> start."""

    status: str
    makespan_us: float
    lower_bound_us: float
    heuristic_us: float
    order: list[str]
    starts_us: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def gap(self) -> float:
        """Relative excess of the heuristic over the CP-SAT makespan."""
        return self.heuristic_us / self.makespan_us - 1.0 if self.makespan_us > 0 else 0.0


def ticks(g: nx.DiGraph, tick_us: float = TICK_US) -> list[int]:
    """Task durations in integer ticks, in ``list(g.nodes)`` order."""
    return [int(round(float(a["duration_us"]) / tick_us)) for _, a in g.nodes(data=True)]


def heuristic_ticks(g: nx.DiGraph, priority: Mapping[str, float] | None = None,
                    tick_us: float = TICK_US) -> tuple[int, list[int]]:
    """List schedule of ``priority`` (default ``seq``) on tick durations, interference 1.0:
    (makespan, starts) in ticks."""
    c = Compiled(g)
    starts: list[float] = []
    ms = c.makespan_us(priority, slowdown=(1.0, 1.0), durations=[float(d) for d in ticks(g, tick_us)], starts=starts)
    return int(round(ms)), [int(round(s)) for s in starts]


def replay_ticks(g: nx.DiGraph, order: list[str], tick_us: float = TICK_US) -> int:
    """Makespan (ticks) of the strict replay of ``order`` (each resource runs its tasks in
    that order, each as early as possible), interference 1.0."""
    c = Compiled(g)
    pos = {t: i for i, t in enumerate(order)}
    ms = c.makespan_us([float(pos[t]) for t in c.names], strict=True, slowdown=(1.0, 1.0),
                       durations=[float(d) for d in ticks(g, tick_us)])
    return int(round(ms))


def solve_order(g: nx.DiGraph, priority: Mapping[str, float] | None = None, time_limit_s: float = 10.0,
                num_workers: int = 2, tick_us: float = TICK_US) -> CpSatResult:
    """The optimal order of ``g``'s tasks (see the module docstring), warm-started from the
    list schedule of ``priority`` (default ``seq``). Interference is 1.0 throughout."""
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    c = Compiled(g)
    dur = ticks(g, tick_us)
    h_ms, h_start = heuristic_ticks(g, priority, tick_us)
    n = len(c.names)
    m = cp_model.CpModel()
    horizon = max(h_ms, 1)
    start = [m.NewIntVar(0, horizon - dur[i], f"s{i}") for i in range(n)]
    iv = [m.NewFixedSizeIntervalVar(start[i], dur[i], f"i{i}") for i in range(n)]
    for r in RESOURCES:
        on = [iv[i] for i in range(n) if c.res[i] == r and dur[i] > 0]
        if len(on) > 1:
            m.AddNoOverlap(on)
    for i in range(n):
        for s in c.succ[i]:
            m.Add(start[i] + dur[i] <= start[s])
    mk = m.NewIntVar(0, horizon, "makespan")
    for i in range(n):
        m.Add(mk >= start[i] + dur[i])
    m.Minimize(mk)
    for i in range(n):
        m.AddHint(start[i], h_start[i])
    m.AddHint(mk, h_ms)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.num_workers = int(num_workers)
    st = solver.Solve(m)
    status = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible"}.get(st, "unknown")
    if status == "unknown":
        return CpSatResult(status, h_ms * tick_us, 0.0, h_ms * tick_us, [], {}, time.perf_counter() - t0)
    s_val = [solver.Value(x) for x in start]
    topo = {t: k for k, t in enumerate(nx.topological_sort(g))}
    order = sorted(c.names, key=lambda t: (s_val[c.index[t]], s_val[c.index[t]] + dur[c.index[t]], topo[t]))
    return CpSatResult(status, solver.ObjectiveValue() * tick_us, solver.BestObjectiveBound() * tick_us,
                       h_ms * tick_us, order, {t: s_val[c.index[t]] * tick_us for t in c.names},
                       time.perf_counter() - t0)


def brute_force_us(g: nx.DiGraph, tick_us: float = TICK_US, max_orders: int = 200_000) -> float:
    """Optimal makespan (µs, interference 1.0) by enumerating every topological order and
    replaying it strictly: each resource sequence combination has a semi-active schedule
    that some topological order produces. For tiny graphs only (raises past
    ``max_orders``)."""
    c = Compiled(g)
    dur = [float(d) for d in ticks(g, tick_us)]
    best = float("inf")
    for k, order in enumerate(itertools.islice(nx.all_topological_sorts(g), max_orders + 1)):
        if k == max_orders:
            raise ValueError(f"more than {max_orders} topological orders")
        pos = {t: i for i, t in enumerate(order)}
        best = min(best, c.makespan_us([float(pos[t]) for t in c.names], strict=True, slowdown=(1.0, 1.0),
                                       durations=dur))
    return round(best) * tick_us
