"""A cluster layout: nodes x GPUs per node, and the expert-parallel (EP) group size.

A cluster may carry its :class:`moesched.network.Network`: a cluster other than the layout a
profile was measured on prices its collectives through the cluster model
(:mod:`moesched.collectives`, :func:`check_setup`).

Ranks are numbered node-major (rank = node * gpus_per_node + local). EP groups are
consecutive ranks; the data-parallel (DP) group of dense parameters is the whole world;
the expert-DP group of expert parameters joins the ranks holding the same experts
(world / ep of them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moesched.errors import MoeschedError
from moesched.limits import MAX_RANKS
from moesched.network import Network

if TYPE_CHECKING:
    from moesched.collectives import CollectiveModel
    from moesched.profile import Profile


@dataclass(frozen=True)
class Cluster:
    """Attributes:
    nodes: number of nodes.
    gpus_per_node: GPUs (ranks) per node.
    ep: expert-parallel group size; None means the whole world.
    network: the links inside and between nodes (None: only the profiled layout is priced).
    """

    nodes: int = 1
    gpus_per_node: int = 4
    ep: int | None = None
    network: Network | None = None

    def __post_init__(self) -> None:
        for f in ("nodes", "gpus_per_node"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise MoeschedError(f"cluster: {f} must be a positive integer, got {v!r}")
        if self.world > MAX_RANKS:
            raise MoeschedError(f"cluster: {self.nodes}x{self.gpus_per_node} is {self.world} GPUs; at most {MAX_RANKS}")
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

    def torchrun_flags(self) -> str:
        """The torchrun flags of a job on this cluster, e.g. "--nproc_per_node=4"; for several
        nodes also the one-host alternative (``--emulate-nodes`` of the executor's commands)."""
        if self.nodes == 1:
            return f"--nproc_per_node={self.gpus_per_node}"
        return (f"--nnodes={self.nodes} --nproc_per_node={self.gpus_per_node}, or on one host "
                f"--nproc_per_node={self.world} --emulate-nodes {self.nodes}")

    def to_dict(self) -> dict[str, Any]:
        """The layout, and the network that priced it when there is one (a plan for a cluster
        beyond the profiled layout replays with the links it was solved for; the executor
        runs on the real links either way)."""
        d: dict[str, Any] = {"nodes": self.nodes, "gpus_per_node": self.gpus_per_node, "ep": self.ep}
        return d if self.network is None else dict(d, network=self.network.to_dict())

    def same_layout(self, profile: "Profile") -> bool:
        """Whether this is the layout the profile was measured on (its per-scope prices hold)."""
        return (profile.nodes, profile.gpus_per_node) == (self.nodes, self.gpus_per_node)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cluster":
        if not isinstance(d, dict) or not {"nodes", "gpus_per_node", "ep"} <= set(d) <= {"nodes", "gpus_per_node",
                                                                                     "ep", "network"}:
            raise MoeschedError(f"cluster spec must have keys nodes, gpus_per_node, ep[, network]; got {d!r:.200}")
        net = None
        if d.get("network") is not None:
            from moesched.network import Network
            net = Network.from_dict(d["network"], "cluster.network")
        return cls(d["nodes"], d["gpus_per_node"], d["ep"], net)

    @classmethod
    def parse(cls, text: str) -> "Cluster":
        """Parse "NODESxGPUS" or "NODESxGPUS/epN", e.g. "2x2", "1x4/ep2"."""
        m = re.fullmatch(r"\s*(\d+)x(\d+)(?:/ep(\d+))?\s*", text)
        if not m:
            raise MoeschedError(f"cannot parse cluster {text!r}; expected NODESxGPUS or NODESxGPUS/epN, e.g. 2x2")
        ep = int(m.group(3)) if m.group(3) else None
        return cls(nodes=int(m.group(1)), gpus_per_node=int(m.group(2)), ep=ep)


def check_setup(experts: int, cluster: Cluster, profile: "Profile") -> None:
    """The one check of model + cluster + profile + network: the experts divide over the
    EP group, and a cluster other than the profiled layout has a network whose tiers can
    be calibrated (an intra-node tier stated when its node size differs from the profile's).
    Raises a one-line MoeschedError naming the problem."""
    cluster.check_model(experts)
    comm_model(cluster, profile)


_MODELS: dict[tuple, tuple["Profile", "CollectiveModel"]] = {}


def comm_model(cluster: Cluster, profile: "Profile") -> "CollectiveModel | None":
    """The calibrated collective model of ``cluster`` on ``profile``; None when the cluster
    is the profiled layout (its measured per-scope prices are used as they are)."""
    if cluster.same_layout(profile):
        return None
    if cluster.network is None:
        raise MoeschedError(f"cluster {cluster.nodes}x{cluster.gpus_per_node} differs from the layout profile "
                            f"{profile.name} was measured on {profile.nodes}x{profile.gpus_per_node} and no network "
                            f"describes its links (give --network PRESET|FILE; `moesched clusters` lists presets)")
    key = (id(profile), cluster.gpus_per_node, cluster.network)
    hit = _MODELS.get(key)
    if hit is None or hit[0] is not profile:
        from moesched.collectives import calibrate
        hit = _MODELS[key] = (profile, calibrate(profile, cluster.network, cluster.gpus_per_node))
    return hit[1]


#: Group of each collective role (:func:`moesched.collectives.cluster_group`) for :meth:`Cluster.scope`.
_ROLE_GROUP = {"ep": "ep", "dp": "dp", "expert_dp": "expert_dp"}


def collective_us(cluster: Cluster, profile: "Profile", op: str, role: str, nbytes: float,
                  shape: str | None = None) -> float:
    """µs of collective ``op`` with ``nbytes`` per rank over the group ``role`` ("ep",
    "ep_intra", "ep_inter", "dp", "expert_dp"): the profile's measured per-scope price
    (in-situ all-to-alls of ``shape`` included) on its own layout, and on another layout
    for a group of exactly the shape a scope was measured on; else the cluster model."""
    model = comm_model(cluster, profile)
    if model is None:
        scope = cluster.scope(_ROLE_GROUP[role]) if role in _ROLE_GROUP else role.split("_")[1]
        return profile.a2a_us(scope, nbytes, shape) if op == "all_to_all" else profile.comm_us(op, scope, nbytes)
    from moesched.collectives import cluster_group, profile_groups
    group = cluster_group(cluster.nodes, cluster.gpus_per_node, cluster.ep_size, role)
    for scope, measured in profile_groups(profile).items():
        if group == measured and scope in profile.comm.get(op, {}):
            return profile.a2a_us(scope, nbytes, shape) if op == "all_to_all" else profile.comm_us(op, scope, nbytes)
    return model.us(op, group, nbytes)
