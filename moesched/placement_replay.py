"""Replay a training run's routing step by step under each placement policy.

Loads: ``loads[step][layer][expert]``, token copies routed to each expert of one EP group
in one step (every rank's micro-batch together). :func:`zipf_loads` makes a drifting Zipf
workload; a routing trace gives them measured.

Step time under a policy: the sum over layers of attention and shared experts (forward
+ backward; :attr:`~moesched.placement_cost.PlacementCost.dense_us`) and the
policy's :class:`~moesched.placement_cost.LayerCost` (busiest rank's expert compute, four
all-to-alls, replica all-reduces), plus the extra transfers of temporary replicas, plus
the migration of the placement changes made before the step. The layers are serialised
(no overlap): the same pricing for every policy, so the comparison is like for like.
The force-balanced ideal (:meth:`~moesched.placement_cost.PlacementCost.ideal`): every rank at
the mean load, no replica, no migration.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Sequence

from moesched.errors import MoeschedError
from moesched.placement import Placement
from moesched.placement_cost import PlacementCost
from moesched.placement_policies import (LayerDecision, PolicyConfig, eplb, flexmoe_greedy, hot_replicas,
                                         mean_loads)
from moesched.placement_search import search

#: Largest Zipf exponent (beyond it every copy goes to the top k experts anyway).
MAX_ZIPF_S = 100.0
POLICIES = ("static", "capacity", "eplb", "flexmoe", "hot", "moesched")
Loads = Sequence[Sequence[Sequence[float]]]


def cap_shares(w: Sequence[float], cap: float) -> list[float]:
    """Shares proportional to ``w``, none above ``cap`` (the excess spread over the others
    in proportion, repeated until none exceeds): a token sends at most one copy to an
    expert, so with top-k routing an expert gets at most 1/k of the copies."""
    tot = sum(w)
    p = [x / tot for x in w]
    for _ in range(len(p)):
        over = [i for i, x in enumerate(p) if x > cap + 1e-12]
        if not over:
            break
        excess = sum(p[i] - cap for i in over)
        rest = sum(x for i, x in enumerate(p) if p[i] < cap - 1e-12)
        for i in range(len(p)):
            p[i] = cap if i in over else (p[i] + excess * p[i] / rest if p[i] < cap - 1e-12 and rest > 0 else p[i])
    return p


def zipf_loads(experts: int, layers: int, steps: int, copies: int, s: float, seed: int = 0,
               drift_steps: float = 200.0, top_k: int = 1) -> list[list[list[float]]]:
    """Drifting Zipf loads: in layer l at step t expert e gets weight 1 / rank^s, rank =
    1 + position of e in a per-layer random order that moves one place every
    ``drift_steps`` steps (interpolated, so popularity drifts smoothly), times a +-10%
    multiplicative noise, no share above 1/top_k (:func:`cap_shares`); ``copies`` copies
    per layer and step in total."""
    if not 0 <= s <= MAX_ZIPF_S or steps < 1 or copies < 1:
        raise MoeschedError(f"zipf: need 0 <= s <= {MAX_ZIPF_S:g}, steps >= 1, copies >= 1 (got {s}, {steps}, {copies})")
    rng = random.Random(seed)
    orders = [rng.sample(range(experts), experts) for _ in range(layers)]
    out = []
    for t in range(steps):
        shift = t / drift_steps
        step = []
        for l in range(layers):
            pos = {e: i for i, e in enumerate(orders[l])}
            w = []
            for e in range(experts):
                x = (pos[e] + shift) % experts
                lo, frac = int(x), x - int(x)
                r = (1 - frac) * (lo + 1) + frac * ((lo + 1) % experts + 1)
                w.append(rng.uniform(0.9, 1.1) * math.exp(-s * math.log(r)))
            step.append([copies * x for x in cap_shares(w, 1.0 / top_k)])
        out.append(step)
    return out


class Policy:
    """One policy's state over a replay: per layer, the persistent placement."""

    def __init__(self, name: str, base: Placement, cost: PlacementCost, cfg: PolicyConfig, layers: int) -> None:
        if name not in POLICIES:
            raise MoeschedError(f"unknown placement policy {name!r}; known: {', '.join(POLICIES)}")
        self.name, self.base, self.cost, self.cfg = name, base, cost, cfg
        self.current = [base] * layers

    def decide(self, step: int, layer: int, history: Loads, now: Sequence[float]) -> LayerDecision:
        """The placement of ``layer`` at ``step``; ``history``: the loads of the earlier steps."""
        cur, cfg, n = self.current[layer], self.cfg, tuple(now)
        if self.name == "static":
            return LayerDecision(cur, cur, n)
        if self.name == "capacity":
            cap = cfg.capacity_factor * sum(n) / len(n)
            kept = tuple(min(x, cap) for x in n)
            return LayerDecision(cur, cur, kept, dropped=sum(n) - sum(kept))
        if self.name == "hot":
            return self._hot(cur, n)
        if step % cfg.interval == 0 and history:
            window = [s[layer] for s in history[-cfg.interval:]]
            pred = mean_loads(window, cfg.interval)
            assert pred is not None
            if self.name == "eplb":
                cur = eplb(pred, cur.ranks, cur.slots)
            elif self.name == "flexmoe":
                cur = flexmoe_greedy(cur, pred, self.cost, cfg.interval, cfg.threshold)
            else:
                cur = search(cur, pred, self.cost, cfg.interval, observed=window)
            self.current[layer] = cur
        if self.name == "moesched":
            return self._hot(cur, n)
        return LayerDecision(cur, cur, n)

    def _hot(self, cur: Placement, n: tuple[float, ...]) -> LayerDecision:
        """Temporary replicas of the hot experts of this step in ``cur``'s free slots, each
        fetching its parameters over the link (the busiest receiver sets the time); none
        when they do not pay for their fetch and their gradient all-reduce."""
        p = hot_replicas(cur, n)
        fetched = [0.0] * p.ranks
        for _, src, dst in cur.moves(p):
            fetched[dst] += self.cost.link_us(self.cost.expert_param_bytes, self.cost.node(src) != self.cost.node(dst))
        if max(fetched) + self.cost.layer(p, n).total_us >= self.cost.layer(cur, n).total_us:
            return LayerDecision(cur, cur, n)
        return LayerDecision(p, cur, n, extra_us=max(fetched))


@dataclass
class ReplayResult:
    """Per policy: step times (µs), mean balance ratio per step (static's = before), the
    steps with a migration, copies dropped, replica memory (bytes per rank, peak: parameters,
    gradients and Adam state of a persistent replica; parameters and gradients of a
    temporary one)."""

    policy: str
    step_us: list[float] = field(default_factory=list)
    balance: list[float] = field(default_factory=list)
    balance_before: list[float] = field(default_factory=list)
    migration_steps: list[int] = field(default_factory=list)
    migrations: int = 0
    dropped: float = 0.0
    replica_memory_bytes: int = 0
    #: (step, persistent placement per layer) at step 0 and wherever one changed
    changes: list[tuple[int, tuple[Placement, ...]]] = field(default_factory=list)

    @property
    def total_us(self) -> float:
        return sum(self.step_us)

    @property
    def mean_step_us(self) -> float:
        return self.total_us / len(self.step_us)

    @property
    def p90_step_us(self) -> float:
        xs = sorted(self.step_us)
        return xs[min(len(xs) - 1, math.ceil(0.9 * len(xs)) - 1)]


def replay(loads: Loads, cost: PlacementCost, slots: int, policies: Sequence[str], cfg: PolicyConfig
           ) -> tuple[dict[str, ReplayResult], ReplayResult]:
    """Every policy of ``policies`` over ``loads``; and the force-balanced ideal."""
    check_loads(loads, cost.model.experts)
    E, R, L = cost.model.experts, cost.ranks, len(loads[0])
    base = Placement.static(E, R, slots)
    out = {name: _replay_one(Policy(name, base, cost, cfg, L), loads, cost, base) for name in policies}
    ideal = ReplayResult("ideal")
    for step in loads:
        ideal.step_us.append(sum(cost.dense_us + cost.ideal(n).total_us for n in step))
        ideal.balance.append(1.0)
    return out, ideal


def _replay_one(policy: Policy, loads: Loads, cost: PlacementCost, base: Placement) -> ReplayResult:
    res = ReplayResult(policy.name)
    L = len(loads[0])
    for t, step in enumerate(loads):
        total, bal, before, moved, mem = 0.0, 0.0, 0.0, 0, [0.0] * cost.ranks
        for l, n in enumerate(step):
            prev = policy.current[l]
            d = policy.decide(t, l, loads[max(0, t - policy.cfg.interval):t], n)
            c = cost.layer(d.placement, d.loads)
            total += cost.dense_us + c.total_us + d.extra_us
            if d.kept != prev:
                moved += len(prev.moves(d.kept))
                total += cost.migrate_us(prev, d.kept)
            bal += c.balance
            before += cost.layer(base, n).balance
            res.dropped += d.dropped
            per = len(base.held()[0])
            for r, (h, k, units) in enumerate(zip(d.placement.held(), d.kept.held(), d.kept.held_units())):
                mem[r] += (max(0.0, units - per) * cost.replica_memory_bytes
                           + (len(h) - len(k)) * 2 * cost.expert_param_bytes)
        res.step_us.append(total)
        res.balance.append(bal / L)
        res.balance_before.append(before / L)
        res.replica_memory_bytes = max(res.replica_memory_bytes, round(max(mem)))
        if t == 0 or tuple(policy.current) != res.changes[-1][1]:
            res.changes.append((t, tuple(policy.current)))
        if moved:
            res.migrations += moved
            res.migration_steps.append(t)
    return res


def check_loads(loads: Loads, experts: int) -> None:
    """One-line MoeschedError unless loads is [steps][layers][experts] of finite counts >= 0."""
    if not loads or not loads[0]:
        raise MoeschedError("routing loads: no steps or no layers")
    L = len(loads[0])
    for t, step in enumerate(loads):
        if len(step) != L:
            raise MoeschedError(f"routing loads: step {t} has {len(step)} layers, step 0 has {L}")
        for l, n in enumerate(step):
            if len(n) != experts:
                raise MoeschedError(f"routing loads: step {t} layer {l} has {len(n)} experts, the model {experts}")
            if any(not (isinstance(x, (int, float)) and math.isfinite(x) and x >= 0) for x in n):
                raise MoeschedError(f"routing loads: step {t} layer {l} has a negative or non-finite count")
