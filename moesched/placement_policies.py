"""Placement policies: each turns the loads observed so far into the placement of the next step.

One layer at a time. Every policy sees ``observed`` (the loads of this layer in the steps
before, copies per expert) and, only where the policy decides per micro-batch after the
router ran, ``now`` (this step's loads). A :class:`LayerDecision` says which placement
runs, its persistent part ``kept`` (replicas that keep their Adam state: a change of it is
a migration, :meth:`moesched.placement_cost.PlacementCost.migrate_us`), the temporary
replicas beyond it (fetched for this step only: ``extra_us``), the loads the experts
really compute, and the copies dropped.

Policies and sources:

* ``static``: plain expert parallelism, E/ranks contiguous experts per rank.
* ``capacity``: DeepSpeed-MoE / GShard capacity-factor dropping (Lepikhin et al. 2020,
  C = f k T / E per expert and source rank; summed over ranks f times the mean load):
  static placement, copies beyond the capacity dropped.
* ``eplb``: DeepSeek's EPLB (deepseek-ai/EPLB ``eplb.py``: ``replicate_experts`` gives each
  extra slot to the expert of largest load per replica, ``balanced_packing`` puts the
  replicas, heaviest first, on the least-loaded rank with a free slot), re-run every
  ``interval`` steps on the mean load of the last interval.
* ``flexmoe``: FlexMoE's threshold-triggered greedy (SYMI §2, TopoEP §6.1: when the
  balance ratio passes ``threshold``, repeatedly expand the hottest expert, shrink the
  coldest replica or migrate; of the plans so far, the one whose gain over the interval
  best beats its migration cost is applied).
* ``hot``: per-micro-batch replication of hot experts (UltraEP, MoonEP): after routing,
  the hottest experts get temporary replicas in the spare slots, when the cost model says
  they pay for themselves; their parameters are fetched (no optimizer state) and their
  gradients reduced back to the owner.
* ``moesched``: local search over persistent placements with the cost model as objective
  (the interval's step time plus the migration), warm-started from the FlexMoE and EPLB
  answers and the current placement (:mod:`moesched.placement_search`); then, each step
  after routing, ``hot``'s temporary replicas in the slots left free.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from moesched.errors import MoeschedError
from moesched.placement import Placement, balance_ratio
from moesched.placement_cost import PlacementCost


@dataclass(frozen=True)
class LayerDecision:
    """What runs in one layer of one step (module docstring)."""

    placement: Placement
    kept: Placement
    loads: tuple[float, ...]
    extra_us: float = 0.0
    dropped: float = 0.0


@dataclass(frozen=True)
class PolicyConfig:
    """interval: steps between decisions; threshold: balance ratio that triggers FlexMoE;
    capacity_factor: f of ``capacity``."""

    interval: int = 50
    threshold: float = 1.2
    capacity_factor: float = 1.25

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise MoeschedError(f"--interval must be >= 1 step, got {self.interval}")
        if not self.threshold >= 1.0:
            raise MoeschedError(f"--threshold is a balance ratio >= 1, got {self.threshold}")
        if not self.capacity_factor > 0:
            raise MoeschedError(f"--capacity-factor must be positive, got {self.capacity_factor}")


def mean_loads(observed: Sequence[Sequence[float]], window: int) -> list[float] | None:
    """Mean per-expert load over the last ``window`` observed steps (None: nothing seen)."""
    if not observed:
        return None
    last = observed[-window:]
    return [sum(col) / len(last) for col in zip(*last)]


def eplb(loads: Sequence[float], ranks: int, slots: int) -> Placement:
    """DeepSeek EPLB: replicate by load per replica until every slot is used, then pack the
    replicas heaviest first onto the least-loaded rank that has a free slot and does not
    hold the expert yet (deepseek-ai/EPLB ``replicate_experts`` + ``balanced_packing``)."""
    E = len(loads)
    count = [1] * E
    for _ in range(ranks * slots - E):
        open_ = [x for x in range(E) if count[x] < ranks]  # at most one replica per rank
        if not open_:
            break
        count[max(open_, key=lambda x: (loads[x] / count[x], -x))] += 1
    items = sorted(((loads[e] / count[e], e) for e in range(E) for _ in range(count[e])), key=lambda t: (-t[0], t[1]))
    load, used = [0.0] * ranks, [0] * ranks
    holders: list[list[int]] = [[] for _ in range(E)]
    for w, e in items:
        free = [r for r in range(ranks) if used[r] < slots and r not in holders[e]]
        r = min(free, key=lambda x: (load[x], x))
        holders[e].append(r)
        load[r] += w
        used[r] += 1
    return Placement.of(holders, ranks, slots)


def _with(p: Placement, e: int, add: int | None = None, drop: int | None = None) -> Placement | None:
    """``p`` with a replica (or, of a split expert, a shard) of expert e added on ``add``
    and/or removed from ``drop``; None when that breaks a limit. A split expert left on one
    rank is whole again there."""
    rs = [r for r in p.replicas[e] if r != drop]
    if add is not None:
        if add in rs:
            return None
        rs.append(add)
    if not rs:
        return None
    held = p.held()
    if add is not None and len(held[add]) - (1 if drop == add else 0) >= p.slots:
        return None
    split = p.split
    if split[e] and len(rs) < 2:
        split = split[:e] + (False,) + split[e + 1:]
    return Placement.trusted(p.replicas[:e] + (tuple(sorted(rs)),) + p.replicas[e + 1:], p.ranks, p.slots, split)


def _spread(p: Placement, loads: Sequence[float]) -> tuple[float, float]:
    """(busiest rank's load, sum of squared rank loads): smaller is more even."""
    rl = p.rank_loads(loads)
    return max(rl), sum(x * x for x in rl)


def flexmoe_greedy(current: Placement, loads: Sequence[float], cost: PlacementCost, horizon: int,
                   threshold: float, max_actions: int | None = None) -> Placement:
    """FlexMoE's greedy (module docstring; SYMI §2: "iteratively shifts by one replica the
    most and least popular experts until another cost-based threshold is crossed").

    While the balance ratio exceeds ``threshold``, take the action that evens the rank
    loads most (busiest rank's load, then the sum of squares, so that a plateau of equally
    busy ranks is worked through) among: Expand (the hottest expert of the busiest rank
    onto the least-loaded rank with a free slot), Shrink+Expand (free a replica of the
    coldest expert that has several and reuse its slot for the hot one) and Migrate (move
    the hot expert's replica from the busiest rank into that free slot). The cost-benefit
    test: of the placements after 0, 1, 2, ... actions, keep the one of least ``horizon``
    steps of layer time plus migration cost from ``current``."""
    p, plan = current, [current]
    for _ in range(max_actions or 2 * current.ranks + 16):
        rl = p.rank_loads(loads)
        if balance_ratio(rl) <= threshold:
            break
        busiest = max(range(p.ranks), key=lambda r: rl[r])
        held = p.held()
        hot = max(held[busiest], key=lambda e: loads[e] / len(p.replicas[e]))
        by_load = sorted(range(p.ranks), key=lambda r: rl[r])
        cands = []
        dst = next((r for r in by_load if len(held[r]) < p.slots and r not in p.replicas[hot]), None)
        if dst is not None:
            cands += [_with(p, hot, add=dst), _with(p, hot, add=dst, drop=busiest)]
        multi = [e for e in range(p.experts) if len(p.replicas[e]) > 1 and e != hot]
        if multi:
            cold = min(multi, key=lambda e: loads[e] / len(p.replicas[e]))
            r = min((x for x in p.replicas[cold] if x not in p.replicas[hot]), key=lambda x: rl[x], default=None)
            shrunk = _with(p, cold, drop=r) if r is not None else None
            if shrunk is not None:
                cands.append(_with(shrunk, hot, add=r))
        scored = [(_spread(c, loads), i) for i, c in enumerate(cands) if c is not None]
        if not scored or min(scored)[0] >= _spread(p, loads):
            break
        p = cands[min(scored)[1]]  # type: ignore[assignment]
        plan.append(p)
    return min(plan, key=lambda q: horizon * cost.layer(q, loads).total_us + cost.migrate_us(current, q))


def hot_replicas(base: Placement, loads: Sequence[float]) -> Placement:
    """Temporary replicas of the hottest experts in ``base``'s spare slots: the expert of
    largest load per replica goes to the least-loaded rank with a free slot, while that
    evens the rank loads (busiest rank, then sum of squares; UltraEP/MoonEP-style
    per-micro-batch balancing)."""
    p = base
    for _ in range(base.ranks * base.slots - sum(len(rs) for rs in base.replicas)):
        rl = p.rank_loads(loads)
        held = p.held()
        busiest = max(range(p.ranks), key=lambda r: rl[r])
        whole = [x for x in held[busiest] if not p.split[x]]  # a shard is not fetched per step
        if not whole:
            break
        e = max(whole, key=lambda x: loads[x] / len(p.replicas[x]))
        free = [r for r in range(p.ranks) if len(held[r]) < p.slots and r not in p.replicas[e]]
        if not free:
            break
        q = _with(p, e, add=min(free, key=lambda r: (rl[r], r)))
        if q is None or _spread(q, loads) >= _spread(p, loads):
            break
        p = q
    return p
