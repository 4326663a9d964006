"""Collective costs by algorithm, group size and the link tiers a group spans.

In the spirit of NCCL's own tuning model (``src/graph/tuning.cc``): a collective's time is
a latency term, ``base + intra_steps * intra_hop_us + inter_steps * inter_hop_us``, plus a
bandwidth term, the bytes through the busiest link over its bandwidth; the tiers of a group
spanning nodes run at once (pipelined), so the slower tier sets the time (Calculon's
per-tier ``latency + size / bw``, ``calculon/network.py``; ASTRA-sim's analytical
``hops * latency + size / bw``).

The bandwidth terms are not peak numbers: each tier is *calibrated* on the profile's
measured curve of the same collective (interpolated in its points, so the small-message
floor is measured too). A tier's curve is re-keyed from the profile's x (bytes per rank's
buffer) to the bytes through the tier's bottleneck -- per GPU for the intra-node link,
per node for the NICs -- with the group the profile measured it on; a new group is priced
by its own bottleneck bytes on that curve plus the latency of the steps it adds. The intra
tier comes from the profile's ``intra`` points when the cluster's node is the profiled
node, else from the network's stated intra tier; the inter tier from the profile's
``inter`` points (a multi-node profile), else from the network's NIC spec.

Traffic per algorithm, for a group of P ranks over n nodes, g per node, c such groups
sharing each node's NICs, x bytes per rank (the profile's x):

=================  =================  ===========================  =====================
algorithm          intra bytes/GPU    node bytes over NICs          steps (intra, inter)
=================  =================  ===========================  =====================
ring all-reduce    2(P-1)/P x         c 2(P-1)/P x (n > 1)          2(P-1) (n = 1 / n > 1)
tree all-reduce    min(g-1, 2) x      c D(n) x / 2 (n > 1)          2(g-1), 4 ceil(log2 n)
ring all-gather,   (P-1)/P x          c (P-1)/P x (n > 1)           P-1 (n = 1 / n > 1)
reduce-scatter
pairwise a2a       (g-1)/P x          c g (P-g)/P x                 g-1, P-g
=================  =================  ===========================  =====================

A ring crosses each node boundary once per ring, so a node sends one ring edge's bytes
(NCCL runs one ring per NIC, which together use every NIC). Every step of a ring that spans
nodes waits for its slowest hop: all its steps are inter-node hops.

A tree all-reduce across nodes is NCCL's double binary tree (``src/graph/trees.cc``; Sanders,
Speck, Träff, "Two-tree algorithms for full bandwidth broadcast, reduction and scan",
Parallel Computing 2009): half the bytes go up and down each of two binary trees over the
nodes, the second the first mirrored (n even) or shifted by one (n odd), so every tree edge
carries x/2 each way. A node sends x/2 on each of its edges in both trees; D(n) is the
most edges any node has in the two trees together (:func:`dtree_edges`: 2 for two nodes,
where the trees are one edge each way, so a node sends x against a ring's 2(P-1)/P x; 4
from four nodes on, 2x, a ring's bytes). Inside a node the tree is a chain: a GPU sends x/2
per neighbour per tree. The tree's bandwidth is derated at medium sizes by NCCL's own
measured factor (:data:`TREE_EFFICIENCY`, ``treeCorrectionFactor`` of
``ncclTopoGetAlgoTime``, ``src/graph/tuning.cc``: "trees are not perfectly sticking to the
model for medium sizes"), and a tree's network hop costs twice a ring's (``hwLat[NET]``,
same file: 28 against 14 µs for Simple, 5.0 / 2.7 for LL, 8.5 / 4.0 for LL128), counted
as two inter steps per tree level. All-reduce across nodes takes the faster of ring and
tree, as NCCL's tuner does (within a node, ring). A group inside one node has no node bytes
and no inter steps: it never pays the inter-node tier.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from moesched.errors import MoeschedError
from moesched.network import Network
from moesched.profile import Cost, Profile

OPS = ("all_to_all", "all_reduce", "all_gather", "reduce_scatter")


@dataclass(frozen=True)
class Group:
    """A communication group: ``size`` ranks over ``nodes`` nodes, ``per_node`` of them
    on each, and ``concurrent`` groups of this shape sharing one node's NICs at once."""

    size: int
    nodes: int
    per_node: int
    concurrent: int = 1

    def __post_init__(self) -> None:
        if min(self.size, self.nodes, self.per_node, self.concurrent) <= 0 or self.size != self.nodes * self.per_node:
            raise MoeschedError(f"a group of {self.size} ranks cannot span {self.nodes} nodes x {self.per_node}")


@dataclass(frozen=True)
class Traffic:
    """Bytes through each tier's bottleneck and the hops of each tier, for x bytes per rank."""

    intra_bytes: float
    node_bytes: float
    intra_steps: int
    inter_steps: int


#: NCCL's tree bandwidth factor for the Simple protocol by size: entry i holds buffers of
#: 64 * 2**i to 64 * 2**(i+1) bytes; 1.0 from 512 MiB on (``treeCorrectionFactor``,
#: ``src/graph/tuning.cc``, its 23-entry table up to 256 MiB; measured by NVIDIA, not fitted here).
TREE_EFFICIENCY = (.9, .9, .9, .9, .9, .9, .9, .8, .7, .6, .6, .5, .5, .5, .5, .6, .7, .8, .7, .7, .8, .9, .9)
#: A tree's network hop in ring hops (NCCL's ``hwLat[NET]`` tree / ring, ``src/graph/tuning.cc``).
TREE_NET_HOPS = 2


def tree_efficiency(nbytes: float) -> float:
    """The fraction of its modelled bandwidth a tree all-reduce of ``nbytes`` bytes reaches
    (:data:`TREE_EFFICIENCY`; 1.0 at and above 512 MiB)."""
    i = int(math.log2(max(nbytes, 64.0) / 64.0))
    return TREE_EFFICIENCY[i] if i < len(TREE_EFFICIENCY) else 1.0


def _btree_edges(n: int, r: int) -> int:
    """Edges of rank ``r`` in NCCL's binary tree over ``n`` ranks (``ncclGetBtree``): rank 0
    is the root with one child; a rank r > 0 has a parent and, when even, a first child
    r - b/2 (b its lowest set bit) and a second one when r + 1 < n; odd ranks are leaves."""
    if n <= 1:
        return 0
    if r == 0:
        return 1
    if r % 2:
        return 1
    return 2 + (1 if r + 1 < n else 0)


def dtree_edges(n: int) -> int:
    """The most tree edges any of ``n`` nodes has in NCCL's double binary tree: the first
    tree plus the second, which is the first mirrored (rank r as n-1-r, n even) or shifted
    by one (rank r as r-1, n odd) (``ncclGetDtree``, ``src/graph/trees.cc``). 0 for one node."""
    if n <= 1:
        return 0
    def other(r: int) -> int:
        return n - 1 - r if n % 2 == 0 else (r - 1) % n
    return max(_btree_edges(n, r) + _btree_edges(n, other(r)) for r in range(n))


def traffic(op: str, algorithm: str, g: Group, x: float) -> Traffic:
    """The traffic of one collective (see the module table)."""
    P, n, per, c = g.size, g.nodes, g.per_node, g.concurrent
    span = n > 1
    if op == "all_to_all":
        return Traffic((per - 1) / P * x, c * per * (P - per) / P * x, per - 1, P - per)
    if op in ("all_gather", "reduce_scatter"):
        steps = P - 1
        return Traffic((P - 1) / P * x, c * (P - 1) / P * x if span else 0.0, 0 if span else steps, steps if span else 0)
    if op == "all_reduce" and algorithm == "ring":
        steps = 2 * (P - 1)
        return Traffic(2 * (P - 1) / P * x, c * 2 * (P - 1) / P * x if span else 0.0, 0 if span else steps,
                       steps if span else 0)
    if op == "all_reduce" and algorithm == "tree":
        return Traffic(min(per - 1, 2) * x, c * dtree_edges(n) * x / 2 if span else 0.0, 2 * (per - 1),
                       TREE_NET_HOPS * 2 * math.ceil(math.log2(n)) if span else 0)
    raise ValueError(f"{op}/{algorithm}")


def algorithms(op: str, nodes: int = 1) -> tuple[str, ...]:
    """The algorithms NCCL may pick for ``op`` on a group over ``nodes`` nodes (tree only
    across nodes: within a node NCCL runs rings)."""
    if op == "all_to_all":
        return ("pairwise",)
    return ("ring", "tree") if op == "all_reduce" and nodes > 1 else ("ring",)


@dataclass(frozen=True)
class TierCurve:
    """A tier's measured (or stated) time curve, keyed by the profile's x: ``cost(b /
    bytes_per_x)`` for b bottleneck bytes, measured with ``steps`` hops of ``hop_us``.
    A group's time is the slower tier's curve less its measured hops, plus the latency of
    the group's own hops on every tier."""

    cost: Cost
    bytes_per_x: float
    steps: int
    hop_us: float

    def base_us(self, nbytes: float) -> float:
        """The curve at ``nbytes`` bottleneck bytes without its measured hops' latency (at
        least half the curve: the hops never account for most of a measured time)."""
        if nbytes <= 0:
            return 0.0
        t = self.cost(nbytes / self.bytes_per_x)
        return max(t - self.steps * self.hop_us, 0.5 * t)


@dataclass(frozen=True)
class CollectiveModel:
    """Calibrated tiers per collective: ``intra[op]`` and ``inter[op]``."""

    intra: dict[str, TierCurve]
    inter: dict[str, TierCurve]

    def us(self, op: str, g: Group, nbytes: float, algorithm: str | None = None) -> float:
        """µs of ``op`` over group ``g`` with ``nbytes`` per rank (fastest algorithm unless given)."""
        if nbytes <= 0:
            return 0.0
        if op not in self.intra:
            raise MoeschedError(f"the cluster model has no calibration for {op}")
        return min(self._us(op, a, g, nbytes) for a in ((algorithm,) if algorithm else algorithms(op, g.nodes)))

    def _us(self, op: str, algorithm: str, g: Group, nbytes: float) -> float:
        t = traffic(op, algorithm, g, nbytes)
        intra, inter = self.intra[op], self.inter[op]
        slow = tree_efficiency(nbytes) if algorithm == "tree" else 1.0  # bytes at the tiers' full rate
        bandwidth = max(intra.base_us(t.intra_bytes / slow) if g.per_node > 1 else 0.0,
                        inter.base_us(t.node_bytes / slow) if g.nodes > 1 else 0.0)
        return bandwidth + t.intra_steps * intra.hop_us + t.inter_steps * inter.hop_us


def profile_groups(profile: Profile) -> dict[str, Group]:
    """The groups a profile's scopes were measured on: ``intra`` = one node's ranks (every
    node at once), ``inter`` = one rank per node (every local index at once), ``world``."""
    N, G = profile.nodes, profile.gpus_per_node
    return {"intra": Group(G, 1, G), "inter": Group(N, N, 1, G), "world": Group(N * G, N, G)}


def measured_curve(cost: Cost, op: str, g: Group, tier: str, hop_us: float) -> TierCurve:
    """The tier curve of ``cost``, measured on group ``g`` (``tier``: "intra" or "inter")."""
    alg = algorithms(op)[0]
    t = traffic(op, alg, g, 1.0)
    per_x, steps = (t.intra_bytes, t.intra_steps) if tier == "intra" else (t.node_bytes, t.inter_steps)
    if per_x <= 0:
        raise MoeschedError(f"the profile's {tier} group moves no bytes for {op}")
    return TierCurve(cost, per_x, steps, hop_us)


def calibrate(profile: Profile, network: Network, gpus_per_node: int,
              scopes: tuple[str, ...] = ("intra", "inter")) -> CollectiveModel:
    """Tiers for a cluster of ``gpus_per_node`` GPUs per node (module docstring).
    ``scopes``: which of the profile's scopes may calibrate (held-out checks leave one out)."""
    groups = profile_groups(profile)
    same_node = gpus_per_node == profile.gpus_per_node
    if not same_node and network.intra is None:
        raise MoeschedError(f"the cluster has {gpus_per_node} GPUs per node but profile {profile.name} measured "
                            f"{profile.gpus_per_node}, and network {network.name} states no intra-node tier")
    intra_hop = network.intra.latency_us if network.intra else 2.0
    intra: dict[str, TierCurve] = {}
    inter: dict[str, TierCurve] = {}
    for op in OPS:
        by = profile.comm.get(op, {})
        if "intra" not in by or "intra" not in scopes:
            continue
        measured = measured_curve(by["intra"], op, groups["intra"], "intra", intra_hop)
        if same_node and profile.gpus_per_node > 1:
            intra[op] = measured
        else:  # the stated link, with the profile's small-message floor
            assert network.intra is not None
            floor = by["intra"](float(2**16))
            intra[op] = TierCurve(Cost(floor, 1.0 / network.intra.bytes_per_us), 1.0, 0, intra_hop)
        if "inter" in by and "inter" in scopes and profile.nodes > 1:
            inter[op] = measured_curve(by["inter"], op, groups["inter"], "inter", network.inter.latency_us)
        else:  # the NIC spec, with the measured small-message floor
            floor = by["intra"](float(2**16))
            inter[op] = TierCurve(Cost(floor, 1.0 / network.node_bytes_per_us), 1.0, 0, network.inter.latency_us)
    for op in ("all_to_all", "all_reduce"):
        if op not in intra:
            raise MoeschedError(f"profile {profile.name} has no intra-node {op} cost to calibrate the cluster model")
    return CollectiveModel(intra, inter)


def cluster_group(nodes: int, gpus_per_node: int, ep: int, role: str) -> Group:
    """The group of one collective of a cluster of ``nodes`` x ``gpus_per_node`` with EP
    size ``ep`` (ranks node-major, EP groups of consecutive ranks). ``role``: "ep" (the flat
    all-to-all), "ep_intra" / "ep_inter" (the hops of the hierarchical all-to-all), "dp"
    (dense gradients, the whole world) or "expert_dp" (ranks holding the same experts)."""
    G, world = gpus_per_node, nodes * gpus_per_node
    if ep % G and G % ep:
        raise MoeschedError(f"EP size {ep} neither divides nor is a multiple of {G} GPUs per node; "
                            "the cluster model needs one or the other")
    if role == "ep":
        return Group(ep, 1, ep, G // ep) if ep <= G else Group(ep, ep // G, G)
    if role == "ep_intra":
        return Group(G, 1, G)
    if role == "ep_inter":
        return Group(ep // G, ep // G, 1, G)
    if role == "dp":
        return Group(world, nodes, G)
    if role == "expert_dp":
        size = world // ep
        return Group(size, size, 1, G) if ep >= G else Group(size, nodes, G // ep, ep)
    raise ValueError(role)
