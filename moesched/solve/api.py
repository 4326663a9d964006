"""The solver's Python API: ``solve(model, cluster, profile) -> SolveResult``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from moesched.cluster import Cluster
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.schedules import POLICIES
from moesched.schedules.base import Evaluation, Schedule, evaluate
from moesched.solve.search import Outcome, search


@dataclass
class SolveResult:
    """The solver's answer.

    schedule: the chosen schedule (policy "moesched"; ``notes["source"]`` says whether it
        came from the search or is a published policy's schedule kept because nothing
        beat it).
    evaluation: the schedule simulated by :func:`moesched.schedules.base.evaluate`.
    table: one row per published policy: policy, step_us (None when the policy cannot
        schedule the model) and speedup (its step / moesched's step).
    timed_out: the time limit stopped the search early.
    stats: simulations run and seconds spent.
    """

    schedule: Schedule
    evaluation: Evaluation
    table: list[dict[str, Any]]
    timed_out: bool = False
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def step_us(self) -> float:
        return self.evaluation.step_us


def table_rows(outcome: Outcome, step_us: float) -> list[dict[str, Any]]:
    """Rows policy, step_us, speedup of moesched (``step_us``) over each published policy."""
    rows = []
    for name in POLICIES:
        c = outcome.published.get(name)
        rows.append({"policy": name, "step_us": None if c is None else c.step_us,
                     "speedup": None if c is None else c.step_us / step_us})
    return rows


def solve(model: MoEModel, cluster: Cluster, profile: Profile, time_limit_s: float | None = None,
          progress: Callable[[str], None] | None = None) -> SolveResult:
    """Search knobs and priorities for ``model`` on ``cluster`` under ``profile``.

    The answer is never predicted slower than any published policy's schedule on the same
    profile: the best published schedule is a candidate, and if the full simulator ever
    disagrees with the search's fast simulator, the best published schedule is returned.
    Raises MoeschedError for infeasible requests.
    """
    out = search(model, cluster, profile, time_limit_s, progress)
    sched = out.best.schedule("moesched")
    ev = evaluate(model, cluster, profile, sched)
    pub = [c for c in out.published.values() if c is not None]
    floor = min(pub, key=lambda c: c.step_us)
    if ev.step_us > floor.step_us:  # defensive: fast and full simulators disagree
        sched = floor.schedule("moesched")
        ev = evaluate(model, cluster, profile, sched)
    return SolveResult(sched, ev, table_rows(out, ev.step_us), out.timed_out,
                       {"simulations": out.sims, "elapsed_s": round(out.elapsed_s, 3)})
