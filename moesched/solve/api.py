"""The solver's Python API: ``solve(model, cluster, profile) -> SolveResult``."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from moesched.cluster import Cluster
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.schedules import POLICIES
from moesched.schedules.base import Evaluation, Schedule, evaluate, executed_timeline
from moesched.solve.search import search

#: Searched candidates (one per pipeline shape) re-ranked with the published schedules by
#: the host-aware replay when the profile has host issue costs.
RUNNERS_UP = 6


@dataclass(frozen=True)
class PolicyRow:
    """One published policy in :attr:`SolveResult.table` (µs; None when the policy cannot
    schedule the model).

    step_us: list-scheduled on GPU costs alone (as :attr:`SolveResult.step_us`).
    executed_us: the step as the executor runs it, host model (as :attr:`SolveResult.executed_us`).
    speedup_vs_vanilla: vanilla's executed step / this one (> 1 is faster).
    """

    policy: str
    step_us: float | None
    executed_us: float | None
    speedup_vs_vanilla: float | None


@dataclass
class SolveResult:
    """The solver's answer.

    schedule: the chosen schedule (policy "moesched"; ``notes["source"]`` says whether it
        came from the search or is a published policy's schedule kept because nothing
        beat it).
    evaluation: the schedule simulated by :func:`moesched.schedules.base.evaluate` (list
        scheduling on GPU costs; its start order is the plan's order).
    executed_us: the predicted step of that plan as the executor runs it
        (:func:`executed_us`; equals ``evaluation.step_us`` without host costs).
    table: one :class:`PolicyRow` per published policy, in ``POLICIES`` order.
    timed_out: the time limit stopped the search early.
    stats: simulations run and seconds spent.
    """

    schedule: Schedule
    evaluation: Evaluation
    table: list[PolicyRow]
    timed_out: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    executed_us: float = 0.0

    @property
    def step_us(self) -> float:
        return self.evaluation.step_us


def executed_us(model: MoEModel, cluster: Cluster, profile: Profile, ev: Evaluation) -> float:
    """Predicted step (µs) of the plan made from ``ev`` as the executor runs it: its start
    order replayed in strict mode on the graph with the profile's host issue costs
    (:mod:`moesched.host`: each rank's host issues the tasks one by one, in plan order).
    This is what ``moesched validate`` predicts. Without host costs: ``ev.step_us``."""
    return executed_timeline(model, cluster, profile, ev).makespan_us


def solve(model: MoEModel, cluster: Cluster, profile: Profile, time_limit_s: float | None = None,
          progress: Callable[[str], None] | None = None, zero: int = 0) -> SolveResult:
    """Search knobs and priorities for ``model`` on ``cluster`` under ``profile``.

    The answer is never predicted slower than any published policy's schedule on the same
    profile. Without host costs the prediction is the list-scheduled step: the best
    published schedule is a candidate, and if the full simulator ever disagrees with the
    search's fast simulator, the best published schedule is returned. With host costs the
    search (on GPU costs) proposes its best candidate and RUNNERS_UP more, and these and
    every published schedule are ranked by :func:`executed_us`: the host decides whether
    the extra tasks of a deeper pipeline pay for themselves.
    The layout is the cluster's (EP = ``cluster.ep_size``; :func:`moesched.solve.layout.solve_layout`
    chooses EP). ``zero``: ZeRO stage of the memory check (:mod:`moesched.memory`).
    Raises MoeschedError for infeasible requests.
    """
    out = search(model, cluster, profile, time_limit_s, progress, zero)
    pub = {n: evaluate(model, cluster, profile, c.schedule(n)) for n, c in out.published.items() if c is not None}
    pub_x = {n: executed_us(model, cluster, profile, e) for n, e in pub.items()}
    if profile.host is None:
        ev = evaluate(model, cluster, profile, out.best.schedule("moesched"))
        floor = min(pub, key=lambda n: pub[n].step_us)
        if ev.step_us > pub[floor].step_us:  # defensive: fast and full simulators disagree
            ev = evaluate(model, cluster, profile, out.published[floor].schedule("moesched"))
        x = ev.step_us
    else:
        mine = [evaluate(model, cluster, profile, c.schedule("moesched"))
                for c in [out.best] + out.runners_up(RUNNERS_UP)]
        options = [(e, executed_us(model, cluster, profile, e)) for e in mine]
        options += [(replace(e, schedule=out.published[n].schedule("moesched")), pub_x[n]) for n, e in pub.items()]
        ev, x = min(options, key=lambda o: o[1])  # the first of equals: the search's best
        if progress:
            progress(f"host-aware replay of {len(options)} plans: best {x / 1000:.3f} ms "
                     f"({ev.schedule.notes.get('source')})")
    rows = []
    base_x = pub_x.get("vanilla")
    for name in POLICIES:
        e = pub.get(name)
        rows.append(PolicyRow(name, None if e is None else e.step_us, None if e is None else pub_x[name],
                              None if e is None or base_x is None else base_x / pub_x[name]))
    return SolveResult(ev.schedule, ev, rows, out.timed_out,
                       {"simulations": out.sims, "elapsed_s": round(out.elapsed_s, 3)}, x)
