"""Expert placement: which ranks hold a replica of each routed expert, and what a step costs.

FlexMoE (Nie et al., SIGMOD'23, arXiv 2304.03946; mechanism as re-implemented by SYMI
arXiv 2504.19925 and Hecate, digest ``flexmoe_ppmoe_findep.md`` §1) virtualises experts
into replicas ("vExperts") on a fixed number of *slots* per GPU. One :class:`Placement` is
the map of one MoE layer: ``replicas[e]`` = the ranks holding expert ``e`` (at least one,
no rank twice), at most ``slots`` experts per rank. The token copies routed to an expert
are split evenly over its replicas.

Cost of one layer of one training step under a placement (:class:`PlacementCost`; the
digest's [R] spec, T(x) = max_g load_g c_tok + T_a2a + T_sync + T_move / interval):

* expert compute: forward, input- and weight-gradient of the busiest rank's copies,
  priced by the profile's cost model (:meth:`moesched.profile.Profile.compute_us`);
* four all-to-alls (dispatch, combine, and their backward): every rank waits for the one
  that sends or receives most (:func:`moesched.cluster.collective_us`, as
  :mod:`moesched.routing` prices measured routing); a rank sends T*k copies and receives
  its replicas' share;
* the replica gradient all-reduce: each replicated expert's gradient is summed over its
  replicas (ring all-reduce, 2(P-1)/P x bytes through each member's link, the table of
  :mod:`moesched.collectives`); a rank pays the all-reduces of all its replicated experts;
* a split expert (:attr:`Placement.split`): its hidden dimension sharded over its ranks,
  tensor parallelism inside one expert as Pipeline MoE places experts inside TP (Chen et
  al., arXiv 2304.11414, §3.3; digest ``../shared/papers/flexmoe_ppmoe_findep.md`` §2;
  :mod:`executor.tp`) and as Megatron-Core's expert tensor parallelism shards every
  expert's FFN: each rank computes its slice's share of the FLOPs of all the expert's
  copies and receives all of them, senders send each copy once per shard, and no gradient
  is all-reduced (the shards' weights are disjoint);
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
from fractions import Fraction
from typing import Any, Sequence

from moesched import work
from moesched.cluster import Cluster, collective_us
from moesched.dense import moe_part
from moesched.errors import MoeschedError
from moesched.memory import ADAM_MOMENT_BYTES, MASTER_COPY_BYTES
from moesched.models import MoEModel
from moesched.profile import Cost, Profile

#: Key of ``Profile.meta`` holding the measured cost of staging an expert's state through
#: host memory (x = bytes; ``executor.placemove``).
MOVE_KEY = "expert_move"


@dataclass(frozen=True)
class Placement:
    """One layer's expert -> ranks map. ``replicas[e]``: sorted ranks holding expert e;
    ``ranks``: ranks of the EP group; ``slots``: most experts (or shards) one rank may hold;
    ``split[e]``: e's ranks hold disjoint contiguous shards of its hidden dimension (the
    i-th rank shard i of n near-equal slices, :meth:`shard_range`) and each receives every
    copy routed to e (module docstring); ``()`` means none split."""

    replicas: tuple[tuple[int, ...], ...]
    ranks: int
    slots: int
    split: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        if not self.split:
            object.__setattr__(self, "split", (False,) * len(self.replicas))
        self.check()

    @classmethod
    def static(cls, experts: int, ranks: int, slots: int | None = None) -> "Placement":
        """Today's expert parallelism: E/ranks contiguous experts per rank, one replica each."""
        if experts % ranks:
            raise MoeschedError(f"placement: {experts} experts do not divide over {ranks} ranks")
        per = experts // ranks
        return cls(tuple((e // per,) for e in range(experts)), ranks, per if slots is None else slots)

    @classmethod
    def trusted(cls, replicas: tuple[tuple[int, ...], ...], ranks: int, slots: int,
                split: tuple[bool, ...] | None = None) -> "Placement":
        """A placement built by a policy from a checked one by a limit-keeping edit: no check
        (the search makes many; tests check every policy's output with :meth:`check`)."""
        p = object.__new__(cls)
        object.__setattr__(p, "replicas", replicas)
        object.__setattr__(p, "ranks", ranks)
        object.__setattr__(p, "slots", slots)
        object.__setattr__(p, "split", split if split else (False,) * len(replicas))
        return p

    @classmethod
    def of(cls, replicas: Sequence[Sequence[int]], ranks: int, slots: int,
           split: Sequence[int] = ()) -> "Placement":
        """From replica lists; ``split``: the ids of the split experts."""
        reps = tuple(tuple(sorted(int(r) for r in rs)) for rs in replicas)
        ids = {int(e) for e in split}
        bad = sorted(e for e in ids if not 0 <= e < len(reps))
        if bad:
            raise MoeschedError(f"placement: split expert {bad[0]} outside 0..{len(reps) - 1}")
        return cls(reps, ranks, slots, tuple(e in ids for e in range(len(reps))))

    def check(self) -> None:
        """Raise a one-line MoeschedError unless every expert has a replica, no expert sits
        twice on a rank, every rank exists and holds at most ``slots`` experts, and every
        split expert has at least two ranks."""
        if self.ranks <= 0 or self.slots <= 0:
            raise MoeschedError(f"placement: ranks and slots must be positive, got {self.ranks}, {self.slots}")
        if len(self.split) != len(self.replicas):
            raise MoeschedError(f"placement: split names {len(self.split)} experts, the layer has {len(self.replicas)}")
        used = [0] * self.ranks
        for e, rs in enumerate(self.replicas):
            if not rs:
                raise MoeschedError(f"placement: expert {e} has no replica")
            if len(set(rs)) != len(rs):
                raise MoeschedError(f"placement: expert {e} is named twice on one rank ({list(rs)})")
            if self.split[e] and len(rs) < 2:
                raise MoeschedError(f"placement: split expert {e} needs at least 2 ranks, has {len(rs)}")
            for r in rs:
                if not 0 <= r < self.ranks:
                    raise MoeschedError(f"placement: expert {e} on rank {r}, outside 0..{self.ranks - 1}")
                used[r] += 1
        over = [r for r in range(self.ranks) if used[r] > self.slots]
        if over:
            raise MoeschedError(f"placement: rank {over[0]} holds {used[over[0]]} experts, over its {self.slots} slots")

    @property
    def experts(self) -> int:
        return len(self.replicas)

    def held(self) -> list[list[int]]:
        """held()[r]: the experts rank r holds (whole or a shard), ascending."""
        out: list[list[int]] = [[] for _ in range(self.ranks)]
        for e, rs in enumerate(self.replicas):
            for r in rs:
                out[r].append(e)
        return out

    def extra_replicas(self) -> int:
        """Replicas (or shards) beyond one per expert: the extra slots used."""
        return sum(len(rs) for rs in self.replicas) - self.experts

    def shard_range(self, e: int, r: int, hidden: int) -> tuple[int, int]:
        """[lo, hi) of expert e's ``hidden`` dimension that rank r holds: all of it for an
        unsplit expert, shard i of ``numpy.array_split(range(hidden), n)`` for the i-th of
        the n ranks of a split one. MoeschedError when r holds no part of e."""
        rs = self.replicas[e]
        if r not in rs:
            raise MoeschedError(f"placement: rank {r} holds no part of expert {e}")
        if not self.split[e]:
            return 0, hidden
        i, n = rs.index(r), len(rs)
        q, rem = divmod(hidden, n)
        lo = i * q + min(i, rem)
        return lo, lo + q + (1 if i < rem else 0)

    def held_units(self) -> list[float]:
        """held_units()[r]: the experts rank r holds, in whole experts (a shard of a split
        expert over n ranks counts 1/n): what its replicas cost in memory."""
        out = [0.0] * self.ranks
        for e, rs in enumerate(self.replicas):
            for r in rs:
                out[r] += 1.0 / len(rs) if self.split[e] else 1.0
        return out

    def held_fraction(self, e: int, r: int) -> tuple[Fraction, Fraction] | None:
        """The slice of expert e rank r holds, as fractions [lo, hi) of the hidden dimension
        (i/n to (i+1)/n for a split expert's i-th of n ranks; differs from
        :meth:`shard_range` / hidden by under one row); None when r holds none of it."""
        rs = self.replicas[e]
        if r not in rs:
            return None
        if not self.split[e]:
            return Fraction(0), Fraction(1)
        i, n = rs.index(r), len(rs)
        return Fraction(i, n), Fraction(i + 1, n)

    def rank_loads(self, loads: Sequence[float]) -> list[float]:
        """Token copies each rank computes, in whole-expert copies: sum over its experts of
        loads[e] / len(replicas[e]) (a replica computes its share of the copies, a shard its
        slice's share of the FLOPs of all of them)."""
        out = [0.0] * self.ranks
        for e, rs in enumerate(self.replicas):
            share = loads[e] / len(rs)
            for r in rs:
                out[r] += share
        return out

    def received_loads(self, loads: Sequence[float]) -> list[float]:
        """Token copies each rank receives: loads[e] / replicas of a replicated expert, all
        of loads[e] on every rank of a split one."""
        out = [0.0] * self.ranks
        for e, rs in enumerate(self.replicas):
            share = loads[e] if self.split[e] else loads[e] / len(rs)
            for r in rs:
                out[r] += share
        return out

    def transfers(self, new: "Placement") -> list[tuple[int, int, int, Fraction]]:
        """(expert, source, destination, fraction of the expert's state) of every copy that
        ``new`` needs: a destination whose new slice this placement does not fully hold
        gets, from a replicated expert, all of it from the lowest current holder (the
        executor's rule, ``executor.placement``); from a split one, from every other old
        holder the part of the new slice that holder's shard overlaps."""
        out = []
        for e, (old, nw) in enumerate(zip(self.replicas, new.replicas)):
            for d in nw:
                want = new.held_fraction(e, d)
                have = self.held_fraction(e, d)
                assert want is not None
                if have is not None and have[0] <= want[0] and want[1] <= have[1]:
                    continue
                if not self.split[e]:
                    out.append((e, old[0], d, want[1] - want[0]))
                    continue
                for s in old:
                    lo, hi = self.held_fraction(e, s)  # type: ignore[misc]
                    part = min(hi, want[1]) - max(lo, want[0])
                    if s != d and part > 0:
                        out.append((e, s, d, part))
        return out

    def moves(self, new: "Placement") -> list[tuple[int, int, int]]:
        """(expert, source, destination) of every transfer ``new`` needs (:meth:`transfers`):
        one per added replica of a replicated expert, one per overlapping old shard of a
        split one."""
        return [(e, s, d) for e, s, d, _ in self.transfers(new)]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"ranks": self.ranks, "slots": self.slots, "replicas": [list(rs) for rs in self.replicas]}
        if any(self.split):
            d["split"] = [e for e, s in enumerate(self.split) if s]
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "placement") -> "Placement":
        if not isinstance(d, dict) or not {"ranks", "slots", "replicas"} <= set(d) <= {"ranks", "slots", "replicas",
                                                                                      "split"}:
            raise MoeschedError(f"{where}: expected keys ranks, slots, replicas (and optional split)")
        try:
            return cls.of(d["replicas"], int(d["ranks"]), int(d["slots"]), d.get("split", ()))
        except (TypeError, ValueError) as e:
            raise MoeschedError(f"{where}: malformed replicas ({e})") from None


def balance_ratio(rank_loads: Sequence[float]) -> float:
    """max / mean rank load (FlexMoE's balance ratio; 1.0 = even). 1.0 for no load."""
    mean = sum(rank_loads) / len(rank_loads)
    return max(rank_loads) / mean if mean > 0 else 1.0


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
