"""The solver under a routing distribution (``moesched solve --routing``): the plan chosen
by its mean step time over sampled steps of the distribution.

:func:`choose` replays, under the same sampled step loads (:func:`moesched.imbalance.expected`,
each plan in the issue order its plan file would hold), these candidates:

1. the solver's even-routing plan (always first, so the choice is never slower than it
   under the distribution: ties keep it);
2. every published policy's plan;
3. the even-routing search's runners-up of other pipeline shapes
   (:func:`moesched.imbalance_plans.search_schedules`);
4. the best policy's plan with every uniform forward x backward pipeline degree
   (:func:`moesched.imbalance_plans.knob_variants`);
5. from the best schedule so far, each layer's forward and backward degree searched in
   turn (:func:`moesched.imbalance_plans.descend`, a change kept only when the mean falls).

The objective is the mean step (µs) under the distribution; p90 is reported. Priorities,
gradient chunking and the all-to-all kind come from the candidates, not searched under the
distribution. :func:`chosen_plan` turns the choice into the :class:`moesched.plan.Plan`
that is written, with the order that was scored.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from moesched import imbalance_plans as ip
from moesched.cluster import Cluster
from moesched.imbalance import StepLoad
from moesched.imbalance_plans import Candidate
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.plan import Plan, from_timeline
from moesched.profile import Profile
from moesched.schedules.base import Schedule, evaluate

EVEN = "moesched (even plan)"


@dataclass(frozen=True)
class Choice:
    """The plans compared under one distribution and the one chosen.

    Attributes:
        even: the solver's even-routing plan under the distribution.
        best: the lowest mean step (µs) of all candidates (``even`` on ties).
        candidates: every plan compared, ``even`` first (per-layer trials not counted).
        schedules: the schedule of every candidate but ``even``, by name.
        policies: the names of the published policies' plans.
    """

    even: Candidate
    best: Candidate
    candidates: tuple[Candidate, ...]
    schedules: dict[str, Schedule] = field(repr=False)
    policies: frozenset[str]

    @property
    def gain(self) -> float:
        """1 - best mean / even-plan mean under the distribution (>= 0 by construction)."""
        return 1.0 - self.best.result.mean_us / self.even.result.mean_us if self.even.result.mean_us > 0 else 0.0

    def shown(self) -> list[Candidate]:
        """The even plan, every published policy's plan and the chosen one, in that order."""
        return [c for c in self.candidates if c.name == EVEN or c.name in self.policies or c is self.best]


def choose(model: MoEModel, cluster: Cluster, profile: Profile, even_knobs: Knobs, even_order: list[str],
           loads: list[StepLoad], time_limit_s: float | None = None, zero: int = 0,
           search: bool = True, chunk_loads: bool = False) -> Choice:
    """The plan with the lowest mean step under ``loads`` among the candidates of the
    module docstring; ``search=False`` leaves out the even-routing search's runners-up
    (step 3, the costly one). ``time_limit_s`` bounds that search (s). ``chunk_loads``:
    every plan priced with per-chunk loads (:mod:`moesched.imbalance_chunks`)."""
    scheds = ip.policy_schedules(model, cluster, profile)
    policies = frozenset(scheds)
    cands = ip.rank_plans(model, cluster, profile, {EVEN: (even_knobs, list(even_order)),
                                                    **ip.plans_of(model, cluster, profile, scheds)}, loads,
                          chunk_loads)
    pol = [c for c in cands if c.name in policies]
    extra = ip.search_schedules(model, cluster, profile, time_limit_s, zero=zero) if search else {}
    if pol:
        top = ip.best(pol)
        extra.update({n: sc for n, sc in ip.knob_variants(scheds[top.name]).items() if sc.knobs != top.knobs})
    scheds.update(extra)
    cands += ip.rank_plans(model, cluster, profile, ip.plans_of(model, cluster, profile, extra), loads, chunk_loads)
    best = ip.best(cands)
    if best.name in scheds:
        found, more = ip.descend(model, cluster, profile, scheds[best.name], best.result.mean_us, loads,
                                 chunk_loads=chunk_loads)
        scheds.update(found)
        cands += more
        best = ip.best(cands)
    return Choice(cands[0], best, tuple(cands), scheds, policies)


def chosen_plan(choice: Choice, model: MoEModel, cluster: Cluster, profile: Profile, even_plan: Plan,
                label: str) -> Plan:
    """The plan to write: ``even_plan`` itself when the even plan was chosen, else the
    chosen schedule's plan (policy moesched), its order the one scored, its notes naming
    the choice and the distribution ``label``."""
    if choice.best.name == EVEN:
        return even_plan
    sc = choice.schedules[choice.best.name]
    ev = evaluate(model, cluster, profile, sc)
    plan = from_timeline("moesched", model, cluster, ev.schedule.knobs, ev.timeline, profile,
                         {"source": f"{choice.best.name}, chosen under routing {label}"})
    assert list(plan.order) == list(choice.best.order), "the written order differs from the scored one"
    return plan
