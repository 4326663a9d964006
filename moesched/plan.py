"""The plan file: what the solver writes and the executor replays.

A plan is the task graph (rebuilt from model, cluster and knobs by
:func:`moesched.graph.build`, so the executor runs exactly the simulated tasks) plus the
issue order: every task once, in a topological order. Each resource's stream runs its
tasks in the order they appear; collectives are issued in that order on every rank.

JSON (version 1)::

    {"format": "moesched.plan", "version": 1, "policy": "moesched",
     "model": {...}, "cluster": {...}, "knobs": {...},
     "profile": {"name": "...", "digest": "..."},
     "order": ["L0.F.attn_fwd.c0", ...],
     "predicted": {"step_us": ..., "exposed_comm_us": ..., ...},
     "hash": "sha256 of the canonical JSON of everything above"}
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.fileio import read_json, write_json
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.models import MoEModel

def replay(model: MoEModel, cluster: Cluster, profile: Any, knobs: Knobs, order: list[str],
           routing: Any = None) -> Any:
    """The predicted :class:`~moesched.sim.Timeline` of issue order ``order`` as the executor
    runs it: a strict simulation (each stream in that order) of the graph of ``knobs`` under
    ``profile``, host issue costs included when the profile has them, and with
    ``routing`` (:class:`moesched.routing.Routing`) every rank's measured load."""
    from moesched.sim import simulate
    g = build(model, cluster, profile, knobs)
    if routing is not None:
        from moesched.routing import apply_routing
        g = apply_routing(g, model, cluster, profile, routing)
    return simulate(g, {t: i for i, t in enumerate(order)}, strict=True)


FORMAT = "moesched.plan"
VERSION = 1
KEYS = {"format", "version", "policy", "model", "cluster", "knobs", "profile", "order", "predicted", "hash"}


@dataclass
class Plan:
    policy: str
    model: MoEModel
    cluster: Cluster
    knobs: Knobs
    order: list[str]
    profile: dict[str, str] = field(default_factory=dict)
    predicted: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "policy": self.policy, "model": self.model.to_dict(),
                "cluster": self.cluster.to_dict(), "knobs": self.knobs.to_dict(), "profile": dict(self.profile),
                "order": list(self.order), "predicted": dict(self.predicted)}

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.body(), sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash}

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    def graph(self) -> nx.DiGraph:
        """The task graph (without durations) the plan orders."""
        return build(self.model, self.cluster, None, self.knobs)

    def replay(self, profile: Any, routing: Any = None) -> Any:
        """This plan's predicted timeline as the executor runs it (:func:`replay`)."""
        return replay(self.model, self.cluster, profile, self.knobs, self.order, routing)

    def validate(self) -> nx.DiGraph:
        """Check the order is a topological order of exactly the graph's tasks; return the graph."""
        g = self.graph()
        if len(self.order) != len(set(self.order)):
            raise MoeschedError("plan order lists a task twice")
        if set(self.order) != set(g.nodes):
            missing = sorted(set(g.nodes) - set(self.order))[:3]
            extra = sorted(set(self.order) - set(g.nodes))[:3]
            raise MoeschedError(f"plan order does not match its task graph (missing {missing}, unknown {extra})")
        pos = {t: i for i, t in enumerate(self.order)}
        for a, b in g.edges:
            if pos[a] > pos[b]:
                raise MoeschedError(f"plan order runs {b} before its dependency {a}")
        return g

    @classmethod
    def from_dict(cls, d: Any, source: str = "plan") -> "Plan":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise MoeschedError(f"{source}: not a moesched plan")
        if d.get("version") != VERSION:
            raise MoeschedError(f"{source}: plan version {d.get('version')!r} is not supported (expected {VERSION})")
        if set(d) != KEYS:
            raise MoeschedError(f"{source}: plan keys differ: missing {sorted(KEYS - set(d))}, "
                                f"unknown {sorted(set(d) - KEYS)}")
        try:
            p = cls(policy=str(d["policy"]), model=MoEModel.from_dict(d["model"]),
                    cluster=Cluster.from_dict(d["cluster"]), knobs=Knobs.from_dict(d["knobs"]),
                    order=[str(t) for t in d["order"]], profile=dict(d["profile"]), predicted=dict(d["predicted"]))
        except MoeschedError as e:
            raise MoeschedError(f"{source}: {e}") from None
        except (TypeError, ValueError) as e:
            raise MoeschedError(f"{source}: malformed plan ({e})") from None
        if p.hash != d["hash"]:
            raise MoeschedError(f"{source}: plan hash mismatch: the file was modified or corrupted")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        p = cls.from_dict(read_json(path, "plan"), source=str(path))
        p.validate()
        return p


def from_timeline(policy: str, model: MoEModel, cluster: Cluster, knobs: Knobs, timeline: Any,
                  profile: Any = None, extra: dict[str, Any] | None = None) -> Plan:
    """Make a plan whose order is the simulated start order (rank 0). ``predicted.step_us``
    and ``exposed_comm_us`` are of the plan as the executor runs it (:func:`replay`: the host
    model when ``profile`` has host costs, then ``gpu_only_step_us`` is ``timeline``'s step)."""
    executed = timeline
    if profile is not None and getattr(profile, "host", None) is not None:
        executed = replay(model, cluster, profile, knobs, timeline.order())
    predicted = {"step_us": round(executed.makespan_us, 3), "exposed_comm_us": round(executed.exposed_comm_us(), 3)}
    if executed is not timeline:
        predicted["gpu_only_step_us"] = round(timeline.makespan_us, 3)
    predicted.update(extra or {})
    prof = {} if profile is None else {"name": profile.name, "digest": profile.digest()}
    return Plan(policy, model, cluster, knobs, timeline.order(), prof, predicted)
