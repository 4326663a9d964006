"""moesched's placement policy: local search over placements with the cost model as objective.

Objective of a candidate placement p, from the current placement c and the predicted
per-expert loads n (copies; the mean of the last interval):

    f(p) = horizon * T_layer(p, n) + T_move(c -> p)

T_layer: :meth:`moesched.placement_cost.PlacementCost.layer` (busiest rank's expert compute,
all-to-alls, replica gradient all-reduces); T_move: parameters and Adam state of every
added replica (:meth:`~moesched.placement_cost.PlacementCost.migrate_us`); horizon: the steps
until the next decision. This is the digest's per-iteration cost T(x) with the move
amortised over the interval (``flexmoe_ppmoe_findep.md`` §1 [R]).

Search: start from the best of the current placement, FlexMoE's greedy answer and EPLB's
(so the result is never worse on f than any of them), then first-improvement descent over
moves that touch the busiest rank: move one of its replicas to a lighter rank (into a free
slot, or swapping with one of that rank's experts), add a replica of one of its experts on
a lighter rank, shard one of its unreplicated experts over it and a lighter rank with a
free slot (:attr:`moesched.placement.Placement.split`: halves the busiest rank's compute of
that expert, not the copies it receives), drop a replica or shard of any expert that has
several (which frees a slot and its all-reduce), unsplit a split expert onto one of its
ranks, and shard a replicated expert over its ranks. Lighter ranks: the ``width`` least
loaded. Stops at a local minimum, after ``max_iters`` improving moves or after
``max_evals`` full evaluations of f (a candidate whose busiest rank alone already costs
more than the best is not evaluated: a valid bound with split experts too, whose ranks
receive at least the copies they compute). Acceptance: the answer replaces the current
placement only if it is also better priced on each observed step of the interval
(:func:`observed_objective`), since the mean load hides the per-step spread that the
busiest rank pays.
"""
from __future__ import annotations

from typing import Iterator, Sequence

from moesched.placement import Placement
from moesched.placement_cost import PlacementCost
from moesched.placement_policies import eplb, flexmoe_greedy


def objective(p: Placement, current: Placement, loads: Sequence[float], cost: PlacementCost, horizon: int) -> float:
    """f(p) of the module docstring, µs over the horizon."""
    return horizon * cost.layer(p, loads).total_us + cost.migrate_us(current, p)


def _edit(p: Placement, rl: list[float], loads: Sequence[float], changes: dict[int, tuple[int, ...]],
          split: dict[int, bool] | None = None) -> tuple[Placement, list[float]]:
    """``p`` with the replica sets of ``changes`` replaced (slots kept by the caller) and
    the experts of ``split`` split or not (others keep theirs; a split expert left on one
    rank is whole), and its rank loads updated from ``rl`` (only the changed experts'
    shares move; a shard's share of the compute is a replica's, loads[e] / ranks of e)."""
    reps, sp = list(p.replicas), list(p.split)
    out = list(rl)
    for e, new in changes.items():
        old = reps[e]
        for r in old:
            out[r] -= loads[e] / len(old)
        for r in new:
            out[r] += loads[e] / len(new)
        reps[e] = tuple(sorted(new))
        sp[e] = (split or {}).get(e, sp[e]) and len(new) > 1
    return Placement.trusted(tuple(reps), p.ranks, p.slots, tuple(sp)), out


def _neighbours(p: Placement, rl: list[float], loads: Sequence[float], width: int
                ) -> Iterator[tuple[Placement, list[float]]]:
    held = p.held()
    busiest = max(range(p.ranks), key=lambda r: rl[r])
    light = sorted((r for r in range(p.ranks) if r != busiest), key=lambda r: rl[r])[:width]
    reps = p.replicas
    for e in sorted(held[busiest], key=lambda x: -loads[x] / len(reps[x])):
        moved = lambda a, b, x=e: tuple(r for r in reps[x] if r != a) + (b,)  # noqa: E731
        for r in light:
            if r in reps[e]:
                continue
            if len(held[r]) < p.slots:
                yield _edit(p, rl, loads, {e: moved(busiest, r)})
                yield _edit(p, rl, loads, {e: reps[e] + (r,)})
                if len(reps[e]) == 1:  # shard e over its rank and r
                    yield _edit(p, rl, loads, {e: reps[e] + (r,)}, {e: True})
            for x in held[r]:  # swap e (busiest -> r) with a lighter x (r -> busiest)
                if busiest not in reps[x] and loads[x] / len(reps[x]) < loads[e] / len(reps[e]):
                    yield _edit(p, rl, loads, {e: moved(busiest, r), x: moved(r, busiest, x)})
    yield from _regroup(p, rl, loads)


def _regroup(p: Placement, rl: list[float], loads: Sequence[float]) -> Iterator[tuple[Placement, list[float]]]:
    """Moves that free a slot or an all-reduce: drop a replica or shard of an expert on
    several ranks, unsplit a split expert onto one of its ranks, shard a replicated expert
    over the ranks holding it (no state moves, its all-reduce goes)."""
    for e, rs in enumerate(p.replicas):
        if len(rs) > 1:
            for r in rs:
                if not p.split[e] or len(rs) > 2:
                    yield _edit(p, rl, loads, {e: tuple(x for x in rs if x != r)})
                if p.split[e]:
                    yield _edit(p, rl, loads, {e: (r,)}, {e: False})
            if not p.split[e]:
                yield _edit(p, rl, loads, {e: rs}, {e: True})


def observed_objective(p: Placement, current: Placement, observed: Sequence[Sequence[float]], cost: PlacementCost,
                       horizon: int) -> float:
    """f(p) with T_layer averaged over the observed steps' own loads instead of priced at
    their mean: a layer waits for its busiest rank, and the mean of a maximum exceeds the
    maximum of the mean, so a placement that evens the mean load may not even the steps."""
    T = sum(cost.layer(p, n).total_us for n in observed) / len(observed)
    return horizon * T + cost.migrate_us(current, p)


def search(current: Placement, loads: Sequence[float], cost: PlacementCost, horizon: int,
           threshold: float = 1.0, width: int = 4, max_iters: int = 200, max_evals: int = 3000,
           observed: Sequence[Sequence[float]] = ()) -> Placement:
    """The placement of least objective found (module docstring); with ``observed`` (the
    per-step loads behind ``loads``), kept only if it also beats ``current`` on
    :func:`observed_objective`."""
    found = _descend(current, loads, cost, horizon, threshold, width, max_iters, max_evals)
    if observed and found != current and (observed_objective(found, current, observed, cost, horizon)
                                          >= observed_objective(current, current, observed, cost, horizon)):
        return current
    return found


def _descend(current: Placement, loads: Sequence[float], cost: PlacementCost, horizon: int,
             threshold: float, width: int, max_iters: int, max_evals: int) -> Placement:
    starts = [current, flexmoe_greedy(current, loads, cost, horizon, threshold),
              eplb(loads, current.ranks, current.slots)]
    scored = [(objective(s, current, loads, cost, horizon), i) for i, s in enumerate(starts)]
    best_f, i = min(scored)
    best = starts[i]
    rl = best.rank_loads(loads)
    evals = 0
    for _ in range(max_iters):
        for q, qrl in _neighbours(best, rl, loads, width):
            top = max(qrl)  # lower bound: compute and all-to-alls alone (sync, moves >= 0)
            if horizon * (cost.compute_us(top) + cost.a2a_us(max(top, cost.sent_copies))) >= best_f - 1e-9:
                continue
            evals += 1
            if evals > max_evals:
                return best
            f = objective(q, current, loads, cost, horizon)
            if f < best_f - 1e-9:
                best, best_f, rl = q, f, qrl
                break
        else:
            break
    return best
