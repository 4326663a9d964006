"""Shared pieces of the published policies: per-chunk cost lookups, degree candidates,
gradient bucket sizes and the ScheMoE Theorem-1 all-to-all order.

Units: µs for times, bytes for sizes, FLOPs for work.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import networkx as nx

from moesched import dense as dense_layers
from moesched import work
from moesched.cluster import Cluster, collective_us
from moesched.knobs import MAX_DEGREE
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.schedules.base import Priority, PriorityFn, priority_vector, seq_priority
from moesched.sim import Compiled

#: PyTorch DDP default bucket: bucket_cap_mb=25 -> 25 * 1024 * 1024 bytes (torch DDP source).
DDP_BUCKET_BYTES = 25 * 2**20
#: FSMoE's PipeMoE+Lina baseline cuts the all-reduce into fixed 30 MB chunks (FSMoE Sec. 5).
LINA_CHUNK_BYTES = 30 * 2**20
#: A2A tasks that open a layer's phase (ScheMoE Theorem 1: these run first) -> those after.
FIRST_A2A = {"fwd": "dispatch", "bwd": "combine_bwd"}
SECOND_A2A = {"fwd": "combine", "bwd": "dispatch_bwd"}
#: Upper bound on gradient chunks a policy asks for (simulation cost; smaller chunks only
#: repeat the all-reduce startup cost).
MAX_GRAD_CHUNKS = 2048


def degrees(model: MoEModel, candidates: Iterable[int] = range(1, MAX_DEGREE + 1),
            at_chunked: bool = False) -> list[int]:
    """Candidate pipeline degrees that divide the tokens per rank (and the micro-batch when
    attention is chunked), as Knobs.check demands; sorted ascending."""
    return sorted(r for r in set(candidates) if 1 <= r <= MAX_DEGREE and model.tokens % r == 0
                  and (not at_chunked or model.micro_batch % r == 0))


def t_a2a_us(model: MoEModel, cluster: Cluster, profile: Profile, r: int) -> float:
    """Per-chunk all-to-all time t_a2a,r at degree r: flat all-to-all of one chunk's bytes
    over the EP group (FSMoE Eq. 1 evaluated with the profile instead of a line)."""
    nbytes = work.a2a_bytes(model, model.tokens // r)
    return collective_us(cluster, profile, "all_to_all", "ep", nbytes, model.shape_key())


def t_exp_us(model: MoEModel, profile: Profile, r: int, backward: bool) -> float:
    """Per-chunk routed-expert time t_exp,r; in backward dX + dW (FSMoE Sec. 2.2: expert
    work doubled in backward; PipeMoE likewise)."""
    flops = work.expert_fwd_flops(model, model.tokens // r)
    if not backward:
        return profile.compute_us("expert_fwd", flops)
    return profile.compute_us("expert_dx", flops) + profile.compute_us("expert_dw", flops)


def t_attn_bwd_us(model: MoEModel, profile: Profile) -> float:
    """Unchunked attention+router backward of one layer, µs (the dense part of a
    generalised layer's overlappable window, FSMoE Sec. 2.4 t_olp,dense)."""
    return profile.compute_us("attn_bwd", work.attn_bwd_flops(model, model.tokens))


def grad_groups(model: MoEModel, cluster: Cluster) -> list[tuple[str, int, str]]:
    """(group, gradient bytes per layer, scope) of every reduced gradient group, as
    moesched.graph builds them (expert gradients only when expert_dp > 1). With dense
    layers (:mod:`moesched.dense`) layers differ: the bytes are the mean over layers."""
    return [(g, sum(per) // model.layers, scope) for g, per, scope in _group_bytes(model, cluster)]


def _group_bytes(model: MoEModel, cluster: Cluster) -> list[tuple[str, list[int], str]]:
    """(group, gradient bytes of each layer, scope) of every reduced gradient group."""
    out = [("dense", dense_layers.grad_bytes_per_layer(model, "dense", cluster.ep_size), cluster.scope("dp"))]
    if cluster.expert_dp > 1:
        out.append(("expert", dense_layers.grad_bytes_per_layer(model, "expert", cluster.ep_size),
                    cluster.scope("expert_dp")))
    return out


def n_grad_chunks(model: MoEModel, cluster: Cluster, chunk_bytes: int | None) -> int:
    """Number of gradient all-reduce chunks the graph will hold for ``chunk_bytes``."""
    total = 0
    for _, per, _ in _group_bytes(model, cluster):
        size = sum(per)
        total += 1 if chunk_bytes is None else -(-size // min(chunk_bytes, size))
    return total


def ar_bytes_within(cluster: Cluster, profile: Profile, role: str, budget_us: float, hi: int) -> int:
    """Largest byte count n <= hi with t_ar(n) <= budget_us over the group ``role``: FSMoE's
    g^inv (Sec. 2.2), by bisection since profile costs may be piecewise (t_ar is nondecreasing)."""
    def t_ar(n: int) -> float:
        return collective_us(cluster, profile, "all_reduce", role, n)

    if budget_us <= 0 or t_ar(1) > budget_us:
        return 0
    lo, up = 1, max(1, hi)
    if t_ar(up) <= budget_us:
        return up
    while up - lo > 1:
        mid = (lo + up) // 2
        lo, up = (mid, up) if t_ar(mid) <= budget_us else (lo, mid)
    return lo


def ranks(keys: Sequence[tuple], names: Sequence[str] | None = None) -> list[float]:
    """Priorities 0, 1, 2, ... by ascending ``keys[i]``, ties broken by ``names[i]`` when
    given (deterministic), else by index; aligned with ``keys``."""
    n = len(keys)
    order = sorted(range(n), key=keys.__getitem__)  # stable: ties by index
    if names is not None:
        try:
            tied = len(set(keys)) < n
        except TypeError:  # unhashable keys: assume ties
            tied = True
        if tied:
            order = sorted(range(n), key=lambda i: (keys[i], names[i]))
    out = [0.0] * n
    for r, i in enumerate(order):
        out[i] = float(r)
    return out


def ranked(g: nx.DiGraph, key: Callable[[str, dict], tuple]) -> dict[str, float]:
    """Priorities 0, 1, 2, ... by ascending ``key(task, attrs)``, ties broken by task name
    (deterministic)."""
    names = list(g.nodes)
    return dict(zip(names, ranks([key(t, a) for t, a in g.nodes(data=True)], names)))


class _Theorem1(Priority):
    """See :func:`theorem1`."""

    def __init__(self, base: PriorityFn) -> None:
        super().__init__("prio")
        self.base = base

    def vector(self, c: Compiled) -> list[float]:
        p = priority_vector(self.base, c)
        first: dict[tuple[int, str], float] = {}
        for i, (kind, phase, layer) in enumerate(zip(c.kind, c.phase, c.layer)):
            if kind == FIRST_A2A.get(phase):
                k = (layer, phase)
                first[k] = max(first.get(k, p[i]), p[i])
        keys = [(x, 0, x) for x in p]
        for i, (kind, phase, layer) in enumerate(zip(c.kind, c.phase, c.layer)):
            if kind == SECOND_A2A.get(phase) and (layer, phase) in first:
                keys[i] = (first[(layer, phase)], 1, p[i])
        return ranks(keys, c.names)


def theorem1(base: PriorityFn) -> Priority:
    """Wrap ``base`` so that, within each layer and phase, every first all-to-all
    (dispatch in forward, combine_bwd in backward) outranks every second one (combine,
    dispatch_bwd): ScheMoE Theorem 1 order (C1^1..C1^r)(..E^i..)(D2^1..D2^r), EuroSys'24
    Sec. 4, and FlowMoE Sec. 3.2's comm stream D_1..D_R -> C_1..C_R. Other tasks keep
    ``base``'s order."""
    return _Theorem1(base)


class _Window(Priority):
    """See :func:`window_priority`."""

    def __init__(self, window: dict[str, int], base: PriorityFn) -> None:
        super().__init__("prio")
        self.window, self.base = window, base

    def vector(self, c: Compiled) -> list[float]:
        p = list(priority_vector(self.base, c))
        last: dict[int, float] = {}
        dense: dict[int, float] = {}  # a dense layer (no all-to-all): its last backward task
        for i, (kind, phase, layer) in enumerate(zip(c.kind, c.phase, c.layer)):
            if phase == "bwd" and kind in (FIRST_A2A["bwd"], SECOND_A2A["bwd"]):
                last[layer] = max(last.get(layer, p[i]), p[i])
            elif phase == "bwd":
                dense[layer] = max(dense.get(layer, p[i]), p[i])
        last = {**dense, **last}
        window, index = self.window, c.index
        placed = sorted((t for t in window if t in index), key=lambda t: (-window[t], p[index[t]], t))
        for j, t in enumerate(placed):
            p[index[t]] = last[window[t]] + 0.5 + 0.4 * j / max(len(placed), 1)
        return p


def window_priority(window: dict[str, int], base: PriorityFn = seq_priority) -> Priority:
    """``base``, except that a gradient chunk placed in layer j's backward window (FSMoE
    Sec. 2.4) ranks just after layer j's backward all-to-alls: it takes the link when no
    all-to-all of layer j is ready, i.e. while experts and attention compute. Chunks not
    in ``window`` keep ``base`` (with seq_priority: after every all-to-all)."""
    return _Window(window, base)
