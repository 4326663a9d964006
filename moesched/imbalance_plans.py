"""Choosing and comparing plans under a routing distribution (``--routing`` of simulate and
solve).

Every candidate plan (each published policy's schedule, and the solver's even-routing plan)
is replayed, in its own issue order, under the same sampled steps of the distribution
(:func:`moesched.imbalance.expected`). ``solve --routing`` keeps the candidate with the
lowest mean step time: the even-routing plan is a candidate, so the plan chosen for the
distribution is never slower than it under that distribution. The table reports, per plan,
its even-routing step, the mean and 90th percentile under the distribution, the slowdown
(mean / even) and the copies dropped per step.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from moesched import schedules
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.imbalance import DEFAULT_SAMPLES, Expected, StepLoad, expected, load_source, sample_steps, step_load
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.schedules.base import Schedule, evaluate


@dataclass(frozen=True)
class Candidate:
    """A plan (knobs, issue order) and how it fares under the distribution."""

    name: str
    knobs: Knobs
    order: tuple[str, ...]
    result: Expected


def sampled_loads(text: str, model: MoEModel, cluster: Cluster, samples: int = DEFAULT_SAMPLES) -> list[StepLoad]:
    """``--routing`` (a trace file or a generator spec) as ``samples`` step loads."""
    if not 1 <= samples <= 1000:
        raise MoeschedError(f"--routing-samples must be between 1 and 1000, got {samples}")
    trace = load_source(text, model, cluster, steps=max(samples, 64))
    return [step_load(trace, s, model, cluster.ep_size) for s in sample_steps(trace, samples)]


def policy_schedules(model: MoEModel, cluster: Cluster, profile: Profile, names: list[str] | None = None
                     ) -> dict[str, Schedule]:
    """Each published policy's schedule for the model, those that can schedule it."""
    out = {}
    for name in names or list(schedules.POLICIES):
        try:
            out[name] = schedules.get(name).schedule(model, cluster, profile)
        except MoeschedError:
            continue
    return out


def knob_variants(base: Schedule, degrees: tuple[int, ...] = (1, 2, 4, 8)) -> dict[str, Schedule]:
    """``base`` with every uniform forward and backward pipeline degree in ``degrees`` (its
    other knobs and its priority rule kept): the search of :func:`choose` under a distribution."""
    L = len(base.knobs.r_fwd)
    out = {}
    for rf in degrees:
        for rb in degrees:
            try:
                k = replace(base.knobs, r_fwd=(rf,) * L, r_bwd=(rb,) * L)
            except MoeschedError:
                continue
            out[f"{base.policy} r_fwd={rf} r_bwd={rb}"] = Schedule(base.policy, k, base.priority, dict(base.notes))
    return out


def search_schedules(model: MoEModel, cluster: Cluster, profile: Profile, time_limit_s: float | None,
                     n: int = 8, zero: int = 0) -> dict[str, Schedule]:
    """The solver's best plan and up to ``n`` runners-up of other pipeline shapes
    (:func:`moesched.solve.search.search`), as candidates under a distribution."""
    from moesched.solve.search import search
    out = search(model, cluster, profile, time_limit_s, None, zero)
    return {f"moesched search #{i}": c.schedule("moesched") for i, c in enumerate([out.best] + out.runners_up(n))}


def plans_of(model: MoEModel, cluster: Cluster, profile: Profile, scheds: dict[str, Schedule]
             ) -> dict[str, tuple[Knobs, list[str]]]:
    """Knobs and issue order of each schedule that evaluates: the order its plan file holds
    (:func:`moesched.plan.from_timeline`), which the executor issues strictly and
    :func:`moesched.imbalance.expected` replays."""
    out = {}
    for name, sc in scheds.items():
        try:
            ev = evaluate(model, cluster, profile, sc)
        except MoeschedError:
            continue
        out[name] = (sc.knobs, ev.timeline.order())
    return out


def policy_plans(model: MoEModel, cluster: Cluster, profile: Profile, names: list[str] | None = None
                 ) -> dict[str, tuple[Knobs, list[str]]]:
    """Knobs and issue order of each published policy that can schedule the model."""
    return plans_of(model, cluster, profile, policy_schedules(model, cluster, profile, names))


def rank_plans(model: MoEModel, cluster: Cluster, profile: Profile, plans: dict[str, tuple[Knobs, list[str]]],
               loads: list[StepLoad], chunk_loads: bool = False) -> list[Candidate]:
    """Every plan under ``loads``, in the given order (``chunk_loads``: per-chunk loads,
    :func:`moesched.imbalance.step_timeline`)."""
    return [Candidate(n, k, tuple(o), expected(model, cluster, profile, k, o, loads, chunk_loads))
            for n, (k, o) in plans.items()]


def best(cands: list[Candidate]) -> Candidate:
    """The lowest mean step time (the first of equals)."""
    return min(cands, key=lambda c: c.result.mean_us)


def descend(model: MoEModel, cluster: Cluster, profile: Profile, start: Schedule, start_mean_us: float,
            loads: list[StepLoad], degrees: tuple[int, ...] = (1, 2, 4, 8), max_evals: int = 48,
            chunk_loads: bool = False) -> tuple[dict[str, Schedule], list[Candidate]]:
    """Per-layer pipeline degrees under the distribution: coordinate descent from ``start``
    (mean step ``start_mean_us`` under ``loads``) over each layer's forward, then backward
    degree, keeping a change when the mean step falls; at most ``max_evals`` plans. Returns
    the improving schedules by name and their candidates (the last is the best)."""
    cur, cur_mean = start.knobs, start_mean_us
    found: dict[str, Schedule] = {}
    cands: list[Candidate] = []
    evals = 0
    for l in range(len(cur.r_fwd)):
        for field_name in ("r_fwd", "r_bwd"):
            for r in degrees:
                rs = getattr(cur, field_name)
                if r == rs[l] or evals >= max_evals:
                    continue
                try:
                    k = replace(cur, **{field_name: rs[:l] + (r,) + rs[l + 1:]})
                except MoeschedError:
                    continue
                name = f"{start.policy} per-layer {_degrees(k)}"
                sc = Schedule(start.policy, k, start.priority, dict(start.notes))
                evals += 1
                got = rank_plans(model, cluster, profile, plans_of(model, cluster, profile, {name: sc}), loads,
                                 chunk_loads)
                if got and got[0].result.mean_us < cur_mean:
                    cur, cur_mean = k, got[0].result.mean_us
                    found[name] = sc
                    cands.append(got[0])
    return found, cands


def _degrees(k: Knobs) -> str:
    return "f" + ",".join(map(str, k.r_fwd)) + " b" + ",".join(map(str, k.r_bwd))
