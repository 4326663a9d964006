"""The cost model of an expert placement (:class:`moesched.placement.Placement`): what one
layer of one training step and a migration cost under it, in µs (sizes in bytes, loads in
token copies).

Cost of one layer of one training step under a placement (:class:`PlacementCost`,
:class:`LayerCost`; the [R] spec of digest ``flexmoe_ppmoe_findep.md`` §1,
T(x) = max_g load_g c_tok + T_a2a + T_sync + T_move / interval):

* expert compute: forward, input- and weight-gradient of the busiest rank's copies,
  priced by the profile's cost model (:meth:`moesched.profile.Profile.compute_us`);
* four all-to-alls (dispatch, combine, and their backward): every rank waits for the one
  that sends or receives most (:func:`moesched.cluster.collective_us`, as
  :mod:`moesched.routing` prices measured routing); a rank sends T*k copies and receives
  its replicas' share;
* the replica gradient all-reduce: each replicated expert's gradient is summed over its
  replicas (ring all-reduce, 2(P-1)/P x bytes through each member's link, the table of
  :mod:`moesched.collectives`); a rank pays the all-reduces of all its replicated experts;
* a split expert (:attr:`moesched.placement.Placement.split`, its hidden dimension
  sharded over its ranks): each rank computes its slice's share of the FLOPs of all the
  expert's copies and receives all of them, senders send each copy once per shard, and no
  gradient is all-reduced (the shards' weights are disjoint);
* attention and shared experts, forward and backward (the same on every placement).

A migration (:meth:`PlacementCost.migrate_us`) moves an expert's parameters *and* its
Adam state (two fp32 moments, plus the fp32 master copy of a 16-bit model: ZeRO Sec. 3.1,
:data:`moesched.memory.ADAM_MOMENT_BYTES`) from a current holder to the new rank; each
rank's incoming bytes cross its link serially, the busiest rank sets the time. A profile
whose ``meta.expert_move`` holds the measured cost of staging expert state through host
memory (device to host to device, ``python -m executor.placemove``) adds that copy's fixed
cost (its fitted alpha) to each move; the bytes cross at the link's bandwidth.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

from moesched import work
from moesched.cluster import Cluster, collective_us
from moesched.dense import moe_part
from moesched.errors import MoeschedError
from moesched.memory import ADAM_MOMENT_BYTES, MASTER_COPY_BYTES
from moesched.models import MoEModel
from moesched.placement import Placement, balance_ratio
from moesched.profile import Cost, Profile

#: Key of ``Profile.meta`` holding the measured cost of staging an expert's state through
#: host memory (x = bytes; ``executor.placemove``).
MOVE_KEY = "expert_move"


@dataclass(frozen=True)
class LayerCost:
    """µs of one layer of one step under a placement (module docstring)."""

    compute_us: float
    a2a_us: float
    sync_us: float
    balance: float

    @property
    def total_us(self) -> float:
        return self.compute_us + self.a2a_us + self.sync_us


class PlacementCost:
    """Prices layers and migrations of ``model`` on ``cluster`` (one EP group of
    ``cluster.ep_size`` ranks) from ``profile`` (module docstring). Only the MoE layers
    are placed: ``self.model`` is ``model`` without its dense layers
    (:func:`moesched.dense.moe_part`), which cost the same under every placement."""

    def __init__(self, model: MoEModel, cluster: Cluster, profile: Profile) -> None:
        model = moe_part(model)
        self.model, self.cluster, self.profile = model, cluster, profile
        self.ranks = cluster.ep_size
        self.shape = model.shape_key()
        m = model
        self.flops_per_copy = 2.0 * m.expert_gemms * m.d_model * m.ffn_hidden
        self.bytes_per_copy = m.d_model * m.bytes_per_elem
        self.sent_copies = work.routed_copies(m, m.tokens)
        self.expert_param_bytes = m.expert_params() * m.bytes_per_elem
        master = MASTER_COPY_BYTES if m.bytes_per_elem < 4 else 0
        #: bytes of one expert's parameters and Adam state (what a migration moves)
        self.expert_state_bytes = m.expert_params() * (m.bytes_per_elem + ADAM_MOMENT_BYTES + master)
        #: bytes of one replica in memory: parameters, gradients, Adam state
        self.replica_memory_bytes = self.expert_state_bytes + self.expert_param_bytes
        ep = self.ranks
        shared = work.shared_fwd_flops(m, m.tokens)
        #: µs per layer alike for every placement: attention and shared experts, forward and backward
        self.dense_us = sum(profile.compute_us(k, f, self.shape, m, ep) for k, f in (
            ("attn_fwd", work.attn_fwd_flops(m, m.tokens)), ("attn_bwd", work.attn_bwd_flops(m, m.tokens)),
            ("shared_fwd", shared), ("shared_bwd", 2 * shared)) if f > 0)
        self._compute_cache: dict[float, float] = {}
        self._a2a_floor: tuple[list[float], list[float]] | None = None
        move = profile.meta.get(MOVE_KEY)
        self.measured_move = Cost.from_dict(move, f"meta.{MOVE_KEY}") if move is not None else None

    # --- links -------------------------------------------------------------------------
    def node(self, rank: int) -> int:
        return rank // self.cluster.gpus_per_node

    def link_us(self, nbytes: float, cross_node: bool) -> float:
        """µs for ``nbytes`` through one GPU's link: inside a node the profile's measured
        ring all-reduce curve (which moves 2(P-1)/P x per GPU) when the profile measured
        this node size, else the network's intra tier; across nodes the profile's inter
        curve on its own layout, else one NIC of the network."""
        if nbytes <= 0:
            return 0.0
        p, c = self.profile, self.cluster
        scope = "inter" if cross_node else "intra"
        measured = p.comm.get("all_reduce", {}).get(scope)
        size = p.gpus_per_node if scope == "intra" else p.nodes
        if measured is not None and size > 1 and (cross_node or p.gpus_per_node == c.gpus_per_node):
            return measured(nbytes / (2.0 * (size - 1) / size))
        net = c.network
        if net is None:
            raise MoeschedError(f"profile {p.name} has no {scope}-node all-reduce to price a replica link; "
                                "give --network PRESET|FILE")
        if not cross_node and net.intra is not None:
            return net.intra.latency_us + nbytes / net.intra.bytes_per_us
        return net.inter.latency_us + nbytes / (net.inter.nic_bandwidth_Gbps * 1e3 / 8.0 / net.oversubscription)

    def move_us(self, nbytes: float, cross_node: bool, moves: int = 1) -> float:
        """µs to move ``nbytes`` of expert state to a rank in ``moves`` copies: the bytes
        through the link (:meth:`link_us`, the profile's bandwidth), plus, when the profile
        measured a move (``meta.expert_move``: device -> host -> device on one GPU, the
        stand-in for a peer copy), that copy's fixed cost (its fitted alpha: staging,
        allocation, launch) per copy. The executor moves state with send/recv over the
        peer link, so the host copy's bandwidth is not what a move pays."""
        t = self.link_us(nbytes, cross_node)
        if self.measured_move is None or nbytes <= 0:
            return t
        return t + moves * max(0.0, self.measured_move.alpha_us)

    def allreduce_us(self, group: Sequence[int], nbytes: float) -> float:
        """Ring all-reduce of ``nbytes`` per rank over ``group`` (ranks): 2(P-1)/P x through
        each member's link (:mod:`moesched.collectives` table)."""
        P = len(group)
        if P <= 1:
            return 0.0
        cross = len({self.node(r) for r in group}) > 1
        return self.link_us(2.0 * (P - 1) / P * nbytes, cross)

    # --- one layer ---------------------------------------------------------------------
    def compute_us(self, copies: float) -> float:
        """Expert forward + dX + dW of ``copies`` token copies on one rank."""
        key = round(copies, 3)
        hit = self._compute_cache.get(key)
        if hit is None:
            f = copies * self.flops_per_copy
            hit = sum(self.profile.compute_us(k, f, self.shape, self.model, self.ranks)
                      for k in ("expert_fwd", "expert_dx", "expert_dw")) if copies > 0 else 0.0
            if len(self._compute_cache) < 200_000:
                self._compute_cache[key] = hit
        return hit

    def _a2a_one_us(self, copies: float) -> float:
        return collective_us(self.cluster, self.profile, "all_to_all", "ep", copies * self.bytes_per_copy, self.shape)

    def a2a_us(self, max_copies: float) -> float:
        """The four all-to-alls of a layer when the busiest rank moves ``max_copies``, never
        less than at fewer copies: a rank that receives more cannot finish sooner, while a
        shape's measured curve may dip (it pools chunked and unchunked calibration runs,
        docs/profiling.md), which a placement would otherwise exploit by loading the
        busiest rank more. The floor is the running maximum of the curve on a 5% grid from
        the copies every rank sends up to all of them on one rank."""
        if self._a2a_floor is None:
            xs, tops, top, x = [], [], 0.0, max(1.0, self.sent_copies)
            while x <= self.sent_copies * self.ranks * 1.05:
                top = max(top, self._a2a_one_us(x))
                xs.append(x)
                tops.append(top)
                x *= 1.05
            self._a2a_floor = (xs, tops)
        xs, tops = self._a2a_floor
        i = bisect.bisect_right(xs, max_copies)
        return 4.0 * max(self._a2a_one_us(max_copies), tops[i - 1] if i else 0.0)

    def sync_us(self, placement: Placement) -> float:
        """Replica gradient all-reduces: each rank pays those of its replicated experts (a
        split expert's shards hold disjoint weights: none)."""
        per_rank = [0.0] * placement.ranks
        for rs, split in zip(placement.replicas, placement.split):
            if len(rs) > 1 and not split:
                t = self.allreduce_us(rs, self.expert_param_bytes)
                for r in rs:
                    per_rank[r] += t
        return max(per_rank)

    def sent_max(self, placement: Placement, loads: Sequence[float]) -> float:
        """Copies the busiest sender sends: every rank sends T*k, and each copy routed to a
        split expert once to each of its n shards, n - 1 more (a rank's share taken as
        1/ranks of the expert's copies)."""
        extra = sum((len(rs) - 1) * loads[e] for e, rs in enumerate(placement.replicas) if placement.split[e])
        return self.sent_copies + extra / self.ranks

    def layer(self, placement: Placement, loads: Sequence[float]) -> LayerCost:
        """Cost of one layer whose experts receive ``loads[e]`` copies in total: compute of
        the busiest rank's whole-expert copies (:meth:`Placement.rank_loads`: a shard of 1/n
        of the hidden dimension does 1/n of the FLOPs of every copy it receives), the four
        all-to-alls at the most copies a rank receives (a split expert's on each of its
        ranks) or sends (:meth:`sent_max`), the replica all-reduces (:meth:`sync_us`)."""
        if placement.ranks != self.ranks:
            raise MoeschedError(f"placement has {placement.ranks} ranks, the EP group {self.ranks}")
        rl = placement.rank_loads(loads)
        busiest = max(rl)
        if any(placement.split):
            moved = max(max(placement.received_loads(loads)), self.sent_max(placement, loads))
        else:
            moved = max(busiest, self.sent_copies)
        return LayerCost(self.compute_us(busiest), self.a2a_us(moved), self.sync_us(placement), balance_ratio(rl))

    def ideal(self, loads: Sequence[float]) -> LayerCost:
        """Force-balanced ideal: every rank at the mean load, no replica to synchronise."""
        mean = sum(loads) / self.ranks
        return LayerCost(self.compute_us(mean), self.a2a_us(max(mean, self.sent_copies)), 0.0, 1.0)

    def migrate_us(self, old: Placement, new: Placement) -> float:
        """Moving parameters + Adam state of every replica ``new`` adds, and of every part of
        a shard's new slice its rank did not hold (:meth:`Placement.transfers`: the
        fraction of the expert's state); each transfer pays the measured move's fixed cost
        (module docstring)."""
        incoming: dict[tuple[int, bool], list[float]] = {}
        for _, src, dst, frac in old.transfers(new):
            got = incoming.setdefault((dst, self.node(src) != self.node(dst)), [0.0, 0])
            got[0] += float(frac) * self.expert_state_bytes
            got[1] += 1
        per_rank: dict[int, float] = {}
        for (dst, cross), (b, n) in incoming.items():
            per_rank[dst] = per_rank.get(dst, 0.0) + self.move_us(b, cross, int(n))
        return max(per_rank.values(), default=0.0)
