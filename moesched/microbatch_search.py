"""moesched's cross-micro-batch plan, and its comparison with the published orders.

Every plan is an order of the stacked graph (:mod:`moesched.microbatch`) run in strict mode
(fixed stream orders, as the executor replays them) on GPU costs (no host model). The
baselines, on the same ``m`` micro-batches of ``micro_batch / m`` samples:

* best single-micro-batch policy: every policy of :mod:`moesched.schedules` run on one
  micro-batch (its knobs, its list-scheduled order), the micro-batches one after another;
  the fastest;
* Megatron-Core's combined 1F1B and DeepSeek's DualPipe chunk pair: their fixed orders on
  unchunked layers with gradient buckets of Megatron-Core's default size.

moesched searches the orders across micro-batches: for every set of knobs the policies
chose (token-chunk degrees, gradient chunks, all-to-all kind) and a few pairing rules, list
scheduling (:func:`moesched.sim.simulate`, non-strict) fills each stream with the ready
task of best rank, forward of micro-batch u+1 ranked beside backward of micro-batch u at a
layer offset; the start order it finds is replayed strictly. The two published orders are
candidates too, and so is the best sequential plan, so the plan is never slower than any
of them; ``label`` says which candidate won.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.knobs import Knobs
from moesched.microbatch import (combined_1f1b_order, dualpipe_order, order_priority, sequential_order,
                                 split_model, stack_graph)
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.schedules import POLICIES, get
from moesched.schedules.base import compiled_graph, evaluate
from moesched.sim import Timeline, simulate

#: Megatron-Core's default DDP bucket when ``--ddp-bucket-size`` is unset: max(40,000,000,
#: 1,000,000 x DP) parameters (``megatron/core/distributed/distributed_data_parallel.py``),
#: here 40e6 x 2 bytes (bf16 gradients; DP <= 40).
MEGATRON_BUCKET_BYTES = 40_000_000 * 2
#: Rank offsets of the nodes inside one layer pair (combined 1F1B's issue order), per phase.
_NODE_RANK = {("fwd", "attn_fwd"): 0, ("bwd", "combine_bwd"): 1, ("fwd", "dispatch"): 2, ("bwd", "expert_dx"): 3,
              ("bwd", "shared_bwd"): 3, ("bwd", "dispatch_bwd"): 4, ("bwd", "expert_dw"): 5,
              ("fwd", "expert_fwd"): 6, ("fwd", "shared_fwd"): 6, ("fwd", "combine"): 7, ("bwd", "attn_bwd"): 8}
#: Layer offsets of the backward against the forward tried by the search (layers).
SHIFTS = (-1, 0, 1, 2)
#: Pairing rules: "pair" as combined 1F1B, "comm" collectives ranked first in their slot,
#: "dw_late" expert dW deferred to the end of the pair (fills idle compute late).
RULES = ("pair", "comm", "dw_late")


@dataclass
class OptimalityGap:
    """moesched's plan against CP-SAT on the same stacked graph, interference 1.0 (the
    exact model of :mod:`moesched.solve.cpsat` cannot express it), µs: ``plan_us`` the
    plan's order replayed strictly; ``best_us`` CP-SAT's best order; ``bound_us`` its proven
    lower bound; ``status`` "optimal", "feasible" or "unknown"; ``wall_s`` seconds spent."""

    plan_us: float
    best_us: float
    bound_us: float
    status: str
    wall_s: float

    @property
    def gap(self) -> float:
        """Excess of the plan over the proven bound (0.02 = 2% above the optimum at most)."""
        return self.plan_us / self.bound_us - 1.0 if self.bound_us > 0 else 0.0


@dataclass
class Plan:
    """One evaluated order: ``label``, its knobs, the order and the strict step time (µs);
    ``gap`` against CP-SAT when :func:`refine` made it."""

    label: str
    knobs: Knobs
    order: list[str]
    step_us: float
    gap: OptimalityGap | None = None


def run_order(g: nx.DiGraph, order: list[str]) -> Timeline:
    """Strict simulation of stacked graph ``g`` in ``order`` (every task named once)."""
    if len(order) != g.number_of_nodes() or set(order) != set(g.nodes):
        raise MoeschedError("an order must name every task of the graph exactly once")
    return simulate(g, order_priority(order), strict=True)


def graphs(model1: MoEModel, cluster: Cluster, profile: Profile, knobs: Knobs,
           microbatches: int) -> tuple[nx.DiGraph, nx.DiGraph]:
    """The one-micro-batch graph of ``model1`` (GPU costs, no host model) and its stack."""
    g1 = compiled_graph(model1, cluster, profile, knobs).graph
    return g1, stack_graph(g1, microbatches)


def best_single(model1: MoEModel, cluster: Cluster, profile: Profile, microbatches: int) -> list[Plan]:
    """Every single-micro-batch policy run micro-batch after micro-batch, fastest first."""
    out = []
    for name in POLICIES:
        try:
            sched = get(name).schedule(model1, cluster, profile)
            ev = evaluate(model1, cluster, profile, sched)
        except MoeschedError:
            continue
        g = stack_graph(ev.graph, microbatches)
        order = sequential_order(ev.timeline.order(), g)
        out.append(Plan(name, sched.knobs, order, run_order(g, order).makespan_us))
    if not out:
        raise MoeschedError(f"no single-micro-batch policy runs {model1.name} on {cluster.label()}")
    return sorted(out, key=lambda p: p.step_us)


def published_knobs(model1: MoEModel) -> Knobs:
    """Knobs of the published cross-micro-batch orders: no token chunks, flat all-to-all,
    gradients in Megatron-Core's default buckets, reduced as they fill."""
    return Knobs.uniform(model1.layers, 1, grad_chunk_bytes=MEGATRON_BUCKET_BYTES)


def published(model1: MoEModel, cluster: Cluster, profile: Profile, microbatches: int) -> dict[str, Plan]:
    """Combined 1F1B and DualPipe on :func:`published_knobs`."""
    k = published_knobs(model1)
    g1, g = graphs(model1, cluster, profile, k, microbatches)
    out = {}
    for label, fn in (("combined-1f1b", combined_1f1b_order), ("dualpipe", dualpipe_order)):
        order = fn(g1, g)
        out[label] = Plan(label, k, order, run_order(g, order).makespan_us)
    return out


def slot_priority(g: nx.DiGraph, shift: int, rule: str) -> dict[str, float]:
    """List-scheduling ranks of stacked graph ``g``: forward of micro-batch u in pair u,
    backward of micro-batch u in pair u+1; in a pair, forward layer i beside backward layer
    L-1-i+``shift``, nodes ranked as in combined 1F1B (adjusted by ``rule``); gradient
    chunks just after their last input (DDP)."""
    L = int(g.graph["model"].layers)
    span = (L + abs(shift) + 2) * 10.0
    pr: dict[str, float] = {}
    for t, a in g.nodes(data=True):
        if a["kind"] == "grad_ar":
            continue
        ph, u, layer = a["phase"], int(a["microbatch"]), int(a["layer"])
        pair = u if ph == "fwd" else u + 1
        x = layer if ph == "fwd" else L - 1 - layer + shift
        off = float(_NODE_RANK.get((ph, a["kind"]), 9))
        if rule == "comm" and a["resource"] != "compute":
            off -= 5.0
        if rule == "dw_late" and a["kind"] == "expert_dw":
            x += L
        pr[t] = pair * 2 * span + x * 10.0 + off + 1e-3 * int(a.get("chunk", 0)) + 1e-9 * a["seq"]
    for t in sorted((t for t, a in g.nodes(data=True) if a["kind"] == "grad_ar"), key=lambda t: g.nodes[t]["seq"]):
        pr[t] = max(pr[p] for p in g.predecessors(t)) + 1e-4
    return pr


def search(model1: MoEModel, cluster: Cluster, profile: Profile, microbatches: int,
           knobs: list[Knobs]) -> list[Plan]:
    """moesched's candidates (see the module docstring) for every knobs in ``knobs``; each
    list-scheduled, then replayed strictly. Fastest first."""
    out = []
    for k in dict.fromkeys(knobs):
        if k.serialize:
            continue
        g1, g = graphs(model1, cluster, profile, k, microbatches)
        tag = f"r{max(k.r_fwd)}/{max(k.r_bwd)}" + ("+hier" if k.a2a == "hierarchical" else "")
        for shift in SHIFTS:
            for rule in RULES:
                order = simulate(g, slot_priority(g, shift, rule)).order()
                out.append(Plan(f"list {rule} shift{shift:+d} {tag}", k, order, run_order(g, order).makespan_us))
        for label, fn in (("combined-1f1b", combined_1f1b_order), ("dualpipe", dualpipe_order)):
            order = fn(g1, g)
            out.append(Plan(f"{label} {tag}", k, order, run_order(g, order).makespan_us))
    return sorted(out, key=lambda p: p.step_us)


def refine(model1: MoEModel, cluster: Cluster, profile: Profile, microbatches: int, plan: Plan,
           time_limit_s: float) -> Plan:
    """CP-SAT (:func:`moesched.solve.cpsat.solve_order`, warm-started from ``plan``'s order,
    interference 1.0) on the stacked graph of ``plan``'s knobs; its order, replayed strictly
    with interference, replaces ``plan`` when faster. The returned plan carries its
    :class:`OptimalityGap`. Needs ortools."""
    from moesched.solve.cpsat import TICK_US, replay_ticks, solve_order
    _, g = graphs(model1, cluster, profile, plan.knobs, microbatches)
    r = solve_order(g, order_priority(plan.order), time_limit_s=time_limit_s)
    best = plan
    if r.order:
        cand = Plan(f"cp-sat from {plan.label}", plan.knobs, r.order, run_order(g, r.order).makespan_us)
        best = cand if cand.step_us < plan.step_us else plan
    mine = replay_ticks(g, best.order) * TICK_US
    best.gap = OptimalityGap(mine, min(r.makespan_us, mine), r.lower_bound_us, r.status, r.wall_s)
    return best


def compare(model: MoEModel, cluster: Cluster, profile: Profile, microbatches: int,
            cpsat_s: float = 0.0) -> dict[str, Plan]:
    """The four plans for ``model`` (its batch cut into ``microbatches``): keys "single"
    (best single-micro-batch policy, label = policy), "combined-1f1b", "dualpipe" and
    "moesched" (the best candidate of :func:`search` over the policies' knobs and
    :func:`published_knobs`, or the sequential plan if none beats it; with ``cpsat_s`` > 0
    then :func:`refine`-d for that many seconds)."""
    model1 = split_model(model, microbatches)
    singles = best_single(model1, cluster, profile, microbatches)
    pub = published(model1, cluster, profile, microbatches)
    knobs = [published_knobs(model1)] + [p.knobs for p in singles]
    ours = min(search(model1, cluster, profile, microbatches, knobs) + [singles[0]], key=lambda p: p.step_us)
    if cpsat_s > 0:
        ours = refine(model1, cluster, profile, microbatches, ours, cpsat_s)
    return {"single": singles[0], **pub, "moesched": ours}
