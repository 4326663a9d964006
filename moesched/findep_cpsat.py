"""The exact DEP schedule of small instances with CP-SAT (FinDEP's Eq. 5).

For fixed (m_a, r1, r2) -- task times fixed -- choosing the start times is a four-machine
job shop (attention-group compute, A2E link, expert-group compute, E2A link): FinDEP's
Eq. 5 rules 1-6 are one no-overlap constraint per resource, rules 7-9 the precedences
(rule 8 as meant: an E2A after its experts, which follow their A2E; the printed rule
skips the A2E's duration). Any order on every resource is allowed, so the optimum bounds
every heuristic order from below. Only this module imports ortools, inside the function
(the GPU machine has none).
"""
from __future__ import annotations

from moesched.errors import MoeschedError
from moesched.findep import TaskTimes

#: µs per model time unit of the integer model (task times in ms, rounded to 1 µs).
SCALE = 1000


def optimal_makespan_ms(tt: TaskTimes, layers: int, r1: int, r2: int, a2e_after_shared: bool = False,
                        time_limit_s: float = 10.0) -> tuple[float, bool]:
    """(makespan in ms, proven optimal) of the best schedule of every order."""
    try:
        from ortools.sat.python import cp_model
    except ImportError as e:  # pragma: no cover - the package requires ortools
        raise MoeschedError(f"CP-SAT needs ortools ({e})") from None
    if layers * r1 * (2 + 3 * r2) > 2000:
        raise MoeschedError("CP-SAT instance too large: keep layers * r1 * (2 + 3 r2) <= 2000 tasks")
    d = {k: max(int(round(v * SCALE)), 0) for k, v in tt.__dict__.items()}
    horizon = layers * r1 * (d["attn"] + d["shared"] + r2 * (2 * d["comm"] + d["expert"])) + 1
    mdl = cp_model.CpModel()
    res: dict[str, list] = {"ag": [], "a2e": [], "eg": [], "e2a": []}

    def task(name: str, dur: int, resource: str):
        s = mdl.NewIntVar(0, horizon, f"s_{name}")
        e = mdl.NewIntVar(0, horizon, f"e_{name}")
        res[resource].append(mdl.NewIntervalVar(s, dur, e, f"i_{name}"))
        return s, e

    ends = []
    prev: list[list] = [[] for _ in range(r1)]   # what micro-batch i's next attention waits for
    for t in range(layers):
        for i in range(r1):
            a_s, a_e = task(f"a{t}_{i}", d["attn"], "ag")
            s_s, s_e = task(f"s{t}_{i}", d["shared"], "ag")
            for p in prev[i]:
                mdl.Add(a_s >= p)                                   # rule 9
            mdl.Add(s_s >= a_e)                                     # rule 7
            nxt = [s_e]
            for j in range(r2):
                c_s, c_e = task(f"c{t}_{i}_{j}", d["comm"], "a2e")
                x_s, x_e = task(f"x{t}_{i}_{j}", d["expert"], "eg")
                b_s, b_e = task(f"b{t}_{i}_{j}", d["comm"], "e2a")
                mdl.Add(c_s >= (s_e if a2e_after_shared else a_e))  # rule 7 (PPPipe: after s)
                mdl.Add(x_s >= c_e)
                mdl.Add(b_s >= x_e)                                 # rule 8
                nxt.append(b_e)
            prev[i] = nxt
            if t == layers - 1:
                ends += nxt
    for ivs in res.values():
        mdl.AddNoOverlap(ivs)                                       # rules 1-6
    span = mdl.NewIntVar(0, horizon, "makespan")
    mdl.AddMaxEquality(span, ends)
    mdl.Minimize(span)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = 2
    status = solver.Solve(mdl)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise MoeschedError("CP-SAT found no DEP schedule within its time limit")
    return solver.Value(span) / SCALE, status == cp_model.OPTIMAL
