"""How close to the force-balanced ideal any replica-free placement can get on a routing trace.

    python benchmarks/placement_bound.py [--model Mixtral-7B-FSMoE]
        [--routing routing/bytelm-L4-E8-top2.jsonl] [--interval 25] [--slots 1]

Prices every step as ``moesched placement`` does (:mod:`moesched.placement_replay`,
shipped profile, 1 x 4 H200) and reports, as totals (s) and fractions of the ideal:

1. static EP and the force-balanced ideal (every rank at the mean load, nothing moved);
2. hindsight, persistent: per layer the one replica-free placement (experts regrouped over
   the ranks, at most ``E/ranks + slots`` per rank) of least total time from the first
   decision (step ``--interval``) to the end, chosen knowing the whole trace, paying its
   migration from static once, kept only where it pays that back;
3. per-step oracle: every step and layer the best replica-free placement, with foresight
   and free migrations (no policy can do better without replicas).

A replica costs its gradient all-reduce every step (printed), which is compared with the
whole gap to the ideal per layer and step. Every grouping of the experts is enumerated
(up to relabelling the ranks): meant for small layers (8 experts on 4 ranks).

Two more rows price, with migrations free, the hindsight persistent grouping (4) as is and
(5) with each layer's hottest expert (by the mean load before the first decision) split in
two shards on two ranks, as tensor parallelism splits an expert's hidden dimension: each
shard computes half the FLOPs of all the expert's copies, its rank receives all of them,
and no gradient is all-reduced (the shards' weights are disjoint). No policy or executor
shards experts; this bounds what doing so could add.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Iterator, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moesched.cluster import Cluster  # noqa: E402
from moesched.models import MoEModel  # noqa: E402
from moesched.placement import Placement  # noqa: E402
from moesched.placement_cost import PlacementCost  # noqa: E402
from moesched.placement_trace import trace_loads  # noqa: E402
from moesched.profile import Profile  # noqa: E402


def groupings(experts: int, ranks: int, cap: int) -> Iterator[tuple[int, ...]]:
    """Each expert's group (restricted growth strings): at most ``ranks`` groups of at most
    ``cap`` experts, every grouping once up to relabelling."""
    def rec(prefix: list[int], sizes: list[int]) -> Iterator[tuple[int, ...]]:
        if len(prefix) == experts:
            yield tuple(prefix)
            return
        for g in range(min(len(sizes) + 1, ranks)):
            if g == len(sizes):
                yield from rec(prefix + [g], sizes + [1])
            elif sizes[g] < cap:
                sizes[g] += 1
                yield from rec(prefix + [g], sizes)
                sizes[g] -= 1
    yield from rec([], [])


def layer_us(cost: PlacementCost, group: Sequence[int], loads: Sequence[float], ranks: int) -> float:
    """µs of one layer with expert e on rank group[e] (no replica, so no all-reduce)."""
    rl = [0.0] * ranks
    for e, g in enumerate(group):
        rl[g] += loads[e]
    top = max(rl)
    return cost.compute_us(top) + cost.a2a_us(max(top, cost.sent_copies))


def split_layer_us(cost: PlacementCost, group: Sequence[int], loads: Sequence[float], ranks: int,
                   hot: int) -> float:
    """µs of one layer with expert e on rank group[e] and expert ``hot``'s second shard on
    group[len(loads)]: each shard computes half of its copies and receives all of them."""
    comp, recv = [0.0] * ranks, [0.0] * ranks
    for i, g in enumerate(group):
        e = hot if i == len(loads) else i
        comp[g] += loads[e] / (2 if e == hot else 1)
        recv[g] += loads[e]
    return cost.compute_us(max(comp)) + cost.a2a_us(max(max(recv), cost.sent_copies))


def cheapest_move_us(cost: PlacementCost, base: Placement, group: Sequence[int], slots: int) -> float:
    """Migration from ``base`` to ``group`` under the labelling of ranks that moves least."""
    R = base.ranks
    return min(cost.migrate_us(base, Placement.of([[perm[g]] for g in group], R, slots))
               for perm in itertools.permutations(range(R)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Mixtral-7B-FSMoE")
    root = Path(__file__).resolve().parent.parent
    ap.add_argument("--routing", default=str(root / "routing" / "bytelm-L4-E8-top2.jsonl"))
    ap.add_argument("--interval", type=int, default=25)
    ap.add_argument("--slots", type=int, default=1, help="extra slots per rank (default 1, as moesched placement)")
    a = ap.parse_args()
    model = MoEModel.from_name(a.model)
    cost = PlacementCost(model, Cluster(1, 4), Profile.load("h200x4-nvlink"))
    E, R = cost.model.experts, cost.ranks
    slots = E // R + a.slots
    loads, _ = trace_loads(a.routing, cost.model, R)
    T, L = len(loads), len(loads[0])
    base = Placement.static(E, R, slots)
    groups = list(groupings(E, R, slots))
    dense = T * L * cost.dense_us
    static = dense + sum(cost.layer(base, n).total_us for s in loads for n in s)
    ideal = dense + sum(cost.ideal(n).total_us for s in loads for n in s)
    persistent, oracle = static, dense
    free, split = static, static
    groups9 = list(groupings(E + 1, R, slots))
    for l in range(L):
        col = [s[l] for s in loads]
        keep = sum(cost.layer(base, n).total_us for n in col[a.interval:])
        best = min(groups, key=lambda g: sum(layer_us(cost, g, n, R) for n in col[a.interval:]))
        gain = keep - sum(layer_us(cost, best, n, R) for n in col[a.interval:])
        persistent -= max(0.0, gain - cheapest_move_us(cost, base, best, slots))
        free -= max(0.0, gain)
        hot = max(range(E), key=lambda e: sum(n[e] for n in col[:a.interval]))
        shards = min(sum(split_layer_us(cost, g, n, R, hot) for n in col[a.interval:])
                     for g in groups9 if g[hot] != g[E])
        split -= max(0.0, keep - min(shards, keep - gain))
        oracle += sum(min(layer_us(cost, g, n, R) for g in groups) for n in col)
    print(f"{a.model} on {a.routing}: {T} steps, {L} layers, {E} experts on {R} ranks, {slots} slots, "
          f"{len(groups)} groupings")
    gap = (static - ideal) / (T * L)
    print(f"one replica's gradient all-reduce: {cost.allreduce_us((0, 1), cost.expert_param_bytes) / 1e3:.2f} ms "
          f"per layer and step; static's whole gap to the ideal: {gap / 1e3:.2f} ms per layer and step")
    one = Placement.of([[0, 1]] + [[e // (E // R)] for e in range(1, E)], R, slots)
    print(f"one expert's migration (parameters + Adam state): {cost.migrate_us(base, one) / 1e3:.1f} ms")
    for name, us in (("static", static), ("hindsight persistent", persistent), ("per-step oracle", oracle),
                     ("hindsight, free moves", free), ("+ hottest split in two", split), ("ideal", ideal)):
        print(f"  {name:22s} {us / 1e6:7.3f} s  {ideal / us:6.1%} of ideal")


if __name__ == "__main__":
    main()
