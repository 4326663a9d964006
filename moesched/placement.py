"""Expert placement: which ranks hold a replica, or a shard, of each routed expert.

FlexMoE (Nie et al., SIGMOD'23, arXiv 2304.03946; mechanism as re-implemented by SYMI
arXiv 2504.19925 and Hecate, digest ``flexmoe_ppmoe_findep.md`` §1) virtualises experts
into replicas ("vExperts") on a fixed number of *slots* per GPU. One :class:`Placement` is
the map of one MoE layer: ``replicas[e]`` = the ranks holding expert ``e`` (at least one,
no rank twice), at most ``slots`` experts per rank. The token copies routed to an expert
are split evenly over its replicas.

A split expert (:attr:`Placement.split`): its hidden dimension sharded over its ranks,
tensor parallelism inside one expert as Pipeline MoE places experts inside TP (Chen et
al., arXiv 2304.11414, §3.3; digest ``../shared/papers/flexmoe_ppmoe_findep.md`` §2;
:mod:`executor.tp`) and as Megatron-Core's expert tensor parallelism shards every
expert's FFN: each of its ranks holds one slice of the expert's weights and receives every
copy routed to it. :func:`balance_ratio`: FlexMoE's max / mean rank load.

What one layer of one training step and a migration cost under a placement, in µs:
:mod:`moesched.placement_cost`.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

from moesched.errors import MoeschedError


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
