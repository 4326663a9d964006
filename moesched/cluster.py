"""A cluster layout: nodes x GPUs per node, and the expert-parallel (EP) group size.

Ranks are numbered node-major (rank = node * gpus_per_node + local). EP groups are
consecutive ranks; the data-parallel (DP) group of dense parameters is the whole world;
the expert-DP group of expert parameters joins the ranks holding the same experts
(world / ep of them).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from moesched.errors import MoeschedError


@dataclass(frozen=True)
class Cluster:
    """Attributes:
    nodes: number of nodes.
    gpus_per_node: GPUs (ranks) per node.
    ep: expert-parallel group size; None means the whole world.
    """

    nodes: int = 1
    gpus_per_node: int = 4
    ep: int | None = None

    def __post_init__(self) -> None:
        for f in ("nodes", "gpus_per_node"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise MoeschedError(f"cluster: {f} must be a positive integer, got {v!r}")
        if self.ep is not None:
            if not isinstance(self.ep, int) or isinstance(self.ep, bool) or self.ep <= 0:
                raise MoeschedError(f"cluster: ep must be a positive integer, got {self.ep!r}")
            if self.world % self.ep:
                raise MoeschedError(f"cluster: ep={self.ep} does not divide world size {self.world}")

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def ep_size(self) -> int:
        return self.world if self.ep is None else self.ep

    @property
    def expert_dp(self) -> int:
        """Ranks that hold the same experts and all-reduce their gradients."""
        return self.world // self.ep_size

    def scope(self, group: str) -> str:
        """Where a group's collective runs: "intra" (inside one node), "inter" (one rank per
        node, across nodes) or "world" (all ranks, several nodes).

        group: "ep" (all-to-all), "dp" (dense gradients) or "expert_dp" (expert gradients).
        """
        if self.nodes == 1:
            return "intra"
        if group == "ep":
            return "intra" if self.ep_size <= self.gpus_per_node else "world"
        if group == "dp":
            return "world"
        if group == "expert_dp":
            return "inter" if self.ep_size == self.gpus_per_node else "world"
        raise ValueError(group)

    def check_model(self, experts: int) -> None:
        if experts % self.ep_size:
            raise MoeschedError(
                f"experts={experts} is not divisible over the expert-parallel group of {self.ep_size} ranks")

    def label(self) -> str:
        return f"{self.nodes}x{self.gpus_per_node}" + (f"/ep{self.ep}" if self.ep else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cluster":
        if not isinstance(d, dict) or set(d) != {"nodes", "gpus_per_node", "ep"}:
            raise MoeschedError(f"cluster spec must have keys nodes, gpus_per_node, ep; got {d!r}")
        return cls(**d)

    @classmethod
    def parse(cls, text: str) -> "Cluster":
        """Parse "NODESxGPUS" or "NODESxGPUS/epN", e.g. "2x2", "1x4/ep2"."""
        m = re.fullmatch(r"\s*(\d+)x(\d+)(?:/ep(\d+))?\s*", text)
        if not m:
            raise MoeschedError(f"cannot parse cluster {text!r}; expected NODESxGPUS or NODESxGPUS/epN, e.g. 2x2")
        ep = int(m.group(3)) if m.group(3) else None
        return cls(nodes=int(m.group(1)), gpus_per_node=int(m.group(2)), ep=ep)
