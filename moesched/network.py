"""A cluster's network: the link inside a node and the NICs between nodes.

Format (JSON, version 1, exact keys, units in names)::

    {"format": "moesched.network", "version": 1, "name": "dgx-h200",
     "description": "...", "source": "where the numbers come from",
     "gpu": "NVIDIA H200", "gpus_per_node": 8,
     "intra": {"bandwidth_GBps": 330.0, "latency_us": 2.0} | null,
     "inter": {"nics_per_node": 8, "nic_bandwidth_Gbps": 400.0, "latency_us": 10.0},
     "oversubscription": 1.0}

``intra.bandwidth_GBps`` is the bus bandwidth one GPU reaches on the node's link (GB/s =
1e9 bytes/s; what nccl-tests reports as busBw), ``latency_us`` the time of one hop of a
collective (NCCL's per-step latency, ``src/graph/tuning.cc``). ``intra`` may be null: the
profile's own node is then the only intra-node tier known, and a cluster of another node
size is refused. ``inter``: NICs per node, each of ``nic_bandwidth_Gbps`` (Gb/s = 1e9
bits/s), one hop's latency; ``oversubscription`` >= 1 divides the NIC bandwidth (a 2:1
fabric gives each node half its NICs' rate across the spine).

Presets ship in the package (``moesched/networks/*.json``); ``moesched clusters`` lists them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesched.errors import MoeschedError
from moesched.fileio import read_json
from moesched.limits import MAX_RANKS

FORMAT = "moesched.network"
VERSION = 1
NETWORKS_DIR = Path(__file__).resolve().parent / "networks"
KEYS = {"format", "version", "name", "description", "source", "gpu", "gpus_per_node", "intra", "inter",
        "oversubscription"}
#: Default preset per GPU name prefix (the profile's ``hardware.gpu``).
DEFAULT_BY_GPU = (("NVIDIA H200", "dgx-h200"), ("NVIDIA H100", "dgx-h100"), ("Tesla V100", "v100-ib100"))


@dataclass(frozen=True)
class IntraTier:
    """The link inside a node: bus bandwidth per GPU (GB/s) and one hop's latency (µs)."""

    bandwidth_GBps: float
    latency_us: float

    @property
    def bytes_per_us(self) -> float:
        return self.bandwidth_GBps * 1e3


@dataclass(frozen=True)
class InterTier:
    """The NICs of a node: count, rate of each (Gb/s) and one hop's latency (µs)."""

    nics_per_node: int
    nic_bandwidth_Gbps: float
    latency_us: float


@dataclass(frozen=True)
class Network:
    """A network preset or file (see the module docstring)."""

    name: str
    description: str
    source: str
    gpu: str
    gpus_per_node: int
    intra: IntraTier | None
    inter: InterTier
    oversubscription: float = 1.0

    @property
    def node_bytes_per_us(self) -> float:
        """Bytes per µs one node sends across the fabric: NICs x rate / oversubscription."""
        return self.inter.nics_per_node * self.inter.nic_bandwidth_Gbps * 1e3 / 8.0 / self.oversubscription

    def summary(self) -> str:
        intra = (f"intra {self.intra.bandwidth_GBps:g} GB/s/GPU, {self.intra.latency_us:g} µs"
                 if self.intra else "intra: the profile's node")
        return (f"{self.name}: {self.gpus_per_node} x {self.gpu} per node, {intra}; inter {self.inter.nics_per_node} x "
                f"{self.inter.nic_bandwidth_Gbps:g} Gb/s NICs, {self.inter.latency_us:g} µs"
                + (f", {self.oversubscription:g}:1 oversubscribed" if self.oversubscription != 1 else ""))

    def to_dict(self) -> dict[str, Any]:
        """The network file's JSON (:meth:`from_dict` reads it back)."""
        return {"format": FORMAT, "version": VERSION, "name": self.name, "description": self.description,
                "source": self.source, "gpu": self.gpu, "gpus_per_node": self.gpus_per_node,
                "intra": None if self.intra is None else {"bandwidth_GBps": self.intra.bandwidth_GBps,
                                                          "latency_us": self.intra.latency_us},
                "inter": {"nics_per_node": self.inter.nics_per_node,
                          "nic_bandwidth_Gbps": self.inter.nic_bandwidth_Gbps, "latency_us": self.inter.latency_us},
                "oversubscription": self.oversubscription}

    @classmethod
    def from_dict(cls, d: Any, source: str) -> "Network":
        """Parse and check a network; every problem is one line naming ``source`` and the key."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise MoeschedError(f"{source}: not a moesched network (expected format {FORMAT!r})")
        if d.get("version") != VERSION or isinstance(d.get("version"), bool):
            raise MoeschedError(f"{source}: network version {d.get('version')!r:.40} is not supported (expected {VERSION})")
        if set(d) != KEYS:
            raise MoeschedError(f"{source}: network keys differ: missing {sorted(KEYS - set(d))}, "
                                f"unknown {sorted(set(d) - KEYS)}")
        for k in ("name", "description", "source", "gpu"):
            if not isinstance(d[k], str) or not d[k].strip():
                raise MoeschedError(f"{source}: {k} must be a non-empty string")
        gpn = _positive(d["gpus_per_node"], f"{source}: gpus_per_node", integer=True)
        intra = None
        if d["intra"] is not None:
            i = _section(d["intra"], {"bandwidth_GBps", "latency_us"}, f"{source}: intra")
            intra = IntraTier(_positive(i["bandwidth_GBps"], f"{source}: intra.bandwidth_GBps"),
                              _nonnegative(i["latency_us"], f"{source}: intra.latency_us"))
        n = _section(d["inter"], {"nics_per_node", "nic_bandwidth_Gbps", "latency_us"}, f"{source}: inter")
        inter = InterTier(int(_positive(n["nics_per_node"], f"{source}: inter.nics_per_node", integer=True)),
                          _positive(n["nic_bandwidth_Gbps"], f"{source}: inter.nic_bandwidth_Gbps"),
                          _nonnegative(n["latency_us"], f"{source}: inter.latency_us"))
        over = _positive(d["oversubscription"], f"{source}: oversubscription")
        if over < 1:
            raise MoeschedError(f"{source}: oversubscription must be >= 1 (1 = non-blocking), got {over:g}")
        return cls(d["name"], d["description"], d["source"], d["gpu"], int(gpn), intra, inter, over)


def _section(x: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(x, dict) or set(x) != keys:
        raise MoeschedError(f"{where} must have exactly the keys {sorted(keys)}")
    return x


def _number(x: Any, where: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not abs(x) <= 1e12:  # nan, inf, 10**400 too
        raise MoeschedError(f"{where} must be a finite number, got {x!r:.40}")
    return float(x)


MIN_RATE = 1e-3  # the smallest bandwidth (GB/s or Gb/s) or oversubscription accepted: below, a step takes days


def _positive(x: Any, where: str, integer: bool = False) -> float:
    v = _number(x, where)
    if integer and (not isinstance(x, int) or not 0 < v <= MAX_RANKS):
        raise MoeschedError(f"{where} must be a positive integer (at most {MAX_RANKS}), got {x!r:.40}")
    if not integer and v < MIN_RATE:
        raise MoeschedError(f"{where} must be at least {MIN_RATE:g}, got {x!r:.40}")
    return v


def _nonnegative(x: Any, where: str) -> float:
    v = _number(x, where)
    if v < 0:
        raise MoeschedError(f"{where} must be >= 0, got {x!r:.40}")
    return v


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in NETWORKS_DIR.glob("*.json"))


def load_network(path_or_name: str | os.PathLike) -> Network:
    """A network from a file, or a shipped preset by name (with or without ``.json``)."""
    text = str(path_or_name)
    if not text.strip():
        raise MoeschedError("the network name is empty")
    p = Path(text)
    if not p.exists() and p.name == text:
        stem = text[:-5] if text.endswith(".json") else text
        shipped = NETWORKS_DIR / f"{stem}.json"
        if shipped.is_file():
            p = shipped
        elif not text.endswith(".json"):
            raise MoeschedError(f"unknown network {text!r}; presets: {', '.join(preset_names())} (or a JSON file)")
    return Network.from_dict(read_json(p, "network"), f"network {p}")


def default_network_name(gpu: str) -> str:
    """The preset for a profile measured on ``gpu`` (``hardware.gpu``); an error naming the
    presets when none is made for that GPU."""
    for prefix, name in DEFAULT_BY_GPU:
        if gpu.startswith(prefix):
            return name
    raise MoeschedError(f"no network preset is the default for {gpu!r}; give --network PRESET|FILE "
                        f"(presets: {', '.join(preset_names())})")
