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
     "layout": {"tp": 2, "sequence_parallel": false, "grouped_experts": true},
     "hash": "sha256 of the canonical JSON of everything above"}

``layout`` is optional: absent (EP plans, whose hashes do not depend on it) the
graph is :func:`moesched.graph.build` of the knobs; present (a PPMoE layout,
:class:`moesched.layouts.Layout` with tp >= 2) it is :func:`moesched.layoutgraph.build`
and the knobs are unused (one chunk per layer).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.fileio import find_nonfinite, read_json, write_json
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.layouts import Layout, check_layout
from moesched.models import MoEModel
from moesched.dense import grad_bytes_per_layer

if TYPE_CHECKING:
    from moesched.profile import Profile
    from moesched.routing import Routing
    from moesched.sim import Timeline

def replay(model: MoEModel, cluster: Cluster, profile: "Profile", knobs: Knobs, order: list[str],
           routing: "Routing | None" = None, layout: Layout | None = None) -> "Timeline":
    """The predicted :class:`~moesched.sim.Timeline` of issue order ``order`` as the executor
    runs it: a strict simulation (each stream in that order) of the graph of ``knobs`` under
    ``profile``, host issue costs included when the profile has them, and with
    ``routing`` (:class:`moesched.routing.Routing`) every rank's measured load. ``layout``
    (tp >= 2): the PPMoE graph of :mod:`moesched.layoutgraph` instead (no routing)."""
    from moesched.sim import simulate
    if layout is not None:
        if routing is not None:
            raise MoeschedError("replay with a routing trace is not supported for a layout plan")
        from moesched.layoutgraph import build as build_layout
        return simulate(build_layout(model, cluster, profile, layout), {t: i for i, t in enumerate(order)},
                        strict=True)
    g = build(model, cluster, profile, knobs)
    if routing is not None:
        from moesched.routing import apply_routing
        g = apply_routing(g, model, cluster, profile, routing)
    return simulate(g, {t: i for i, t in enumerate(order)}, strict=True)


FORMAT = "moesched.plan"
VERSION = 1
#: Most gradient all-reduce chunks a plan may hold (the solver stays far below: a few
#: hundred); a smaller ``grad_chunk_bytes`` is refused before the graph is built.
MAX_PLAN_GRAD_CHUNKS = 65536
KEYS = {"format", "version", "policy", "model", "cluster", "knobs", "profile", "order", "predicted", "hash"}
#: Keys a plan may hold besides KEYS.
OPTIONAL_KEYS = {"layout"}


@dataclass
class Plan:
    policy: str
    model: MoEModel
    cluster: Cluster
    knobs: Knobs
    order: list[str]
    profile: dict[str, str] = field(default_factory=dict)
    predicted: dict[str, Any] = field(default_factory=dict)
    layout: Layout | None = None

    def body(self) -> dict[str, Any]:
        out = {"format": FORMAT, "version": VERSION, "policy": self.policy, "model": self.model.to_dict(),
               "cluster": self.cluster.to_dict(), "knobs": self.knobs.to_dict(), "profile": dict(self.profile),
               "order": list(self.order), "predicted": dict(self.predicted)}
        if self.layout is not None:
            out["layout"] = self.layout.to_dict()
        return out

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.body(), sort_keys=True).encode()).hexdigest()

    @property
    def runs_hash(self) -> str:
        """Hash of what the executor runs (model, cluster, knobs, order, layout): two
        schedules that solve to the same steps share it, whatever their policy names and
        predictions (:mod:`moesched.noisefloor`)."""
        body = self.body()
        runs = {k: body[k] for k in ("model", "cluster", "knobs", "order", "layout") if k in body}
        return hashlib.sha256(json.dumps(runs, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash}

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    def graph(self) -> nx.DiGraph:
        """The task graph (without durations) the plan orders."""
        if self.layout is not None:
            from moesched.layoutgraph import build as build_layout
            return build_layout(self.model, self.cluster, None, self.layout)
        return build(self.model, self.cluster, None, self.knobs)

    def replay(self, profile: "Profile", routing: "Routing | None" = None) -> "Timeline":
        """This plan's predicted timeline as the executor runs it (:func:`replay`)."""
        return replay(self.model, self.cluster, profile, self.knobs, self.order, routing, self.layout)

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
        if d.get("version") != VERSION or isinstance(d.get("version"), bool):
            raise MoeschedError(f"{source}: plan version {d.get('version')!r:.60} is not supported (expected {VERSION})")
        bad = find_nonfinite(d)
        if bad:
            raise MoeschedError(f"{source}: {bad}")
        if not KEYS <= set(d) <= KEYS | OPTIONAL_KEYS:
            raise MoeschedError(f"{source}: plan keys differ: missing {sorted(KEYS - set(d))}, "
                                f"unknown {sorted(set(d) - KEYS - OPTIONAL_KEYS)}")
        try:
            p = cls(policy=_typed(d, "policy", str), model=MoEModel.from_dict(d["model"]),
                    cluster=Cluster.from_dict(d["cluster"]), knobs=Knobs.from_dict(d["knobs"]),
                    order=_typed(d, "order", list), profile=_typed(d, "profile", dict),
                    predicted=_typed(d, "predicted", dict),
                    layout=Layout.from_dict(d["layout"]) if "layout" in d else None)
            if not all(isinstance(t, str) for t in p.order):
                raise MoeschedError("order must be a list of task names (strings)")
            p.knobs.check(p.model.layers, p.model.tokens, p.model.micro_batch)
            check_grad_chunks(p.model, p.cluster, p.knobs)
            if p.layout is not None:
                check_layout(p.model, p.cluster, p.layout)
        except MoeschedError as e:
            raise MoeschedError(f"{source}: {e}") from None
        except (TypeError, ValueError, OverflowError) as e:
            raise MoeschedError(f"{source}: malformed plan ({e})") from None
        if not isinstance(d["hash"], str):
            raise MoeschedError(f"{source}: plan hash must be a string")
        if p.hash != d["hash"]:
            raise MoeschedError(f"{source}: plan hash mismatch: the file was modified or corrupted")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        """Read and check a plan: types and ranges of every field, the hash, then the order
        against the task graph. Every problem is one :class:`MoeschedError` line."""
        source = f"plan {path}"
        p = cls.from_dict(read_json(path, "plan"), source=source)
        try:
            p.validate()
        except MoeschedError as e:
            raise MoeschedError(f"{source}: {e}") from None
        except (TypeError, ValueError, ArithmeticError) as e:  # sizes the graph cannot be built for
            raise MoeschedError(f"{source}: malformed plan ({type(e).__name__}: {e})") from None
        return p


def _typed(d: dict[str, Any], key: str, kind: type) -> Any:
    """``d[key]`` if it has JSON type ``kind``."""
    if not isinstance(d[key], kind):
        raise MoeschedError(f"{key} must be a JSON {'string' if kind is str else 'list' if kind is list else 'object'}")
    return d[key]


def check_grad_chunks(model: MoEModel, cluster: Cluster, knobs: Knobs) -> None:
    """Refuse knobs that cut the gradients into more than MAX_PLAN_GRAD_CHUNKS all-reduce
    chunks (the graph would hold that many tasks)."""
    if knobs.grad_chunk_bytes is None:
        return
    totals = [sum(grad_bytes_per_layer(model, "dense", cluster.ep_size))]
    if cluster.expert_dp > 1:
        totals.append(sum(grad_bytes_per_layer(model, "expert", cluster.ep_size)))
    n = sum(-(-t // min(knobs.grad_chunk_bytes, t)) for t in totals if t > 0)
    if n > MAX_PLAN_GRAD_CHUNKS:
        raise MoeschedError(f"grad_chunk_bytes={knobs.grad_chunk_bytes} cuts the gradients into {n} all-reduce "
                            f"chunks; at most {MAX_PLAN_GRAD_CHUNKS} are allowed (use larger chunks)")


def from_timeline(policy: str, model: MoEModel, cluster: Cluster, knobs: Knobs, timeline: "Timeline",
                  profile: "Profile | None" = None, extra: dict[str, Any] | None = None,
                  layout: Layout | None = None) -> Plan:
    """Make a plan whose order is the simulated start order (rank 0). ``predicted.step_us``
    and ``exposed_comm_us`` are of the plan as the executor runs it (:func:`replay`: the host
    model when ``profile`` has host costs, then ``gpu_only_step_us`` is ``timeline``'s step).
    ``layout``: the plan of a PPMoE layout (``timeline`` simulates its graph)."""
    executed = timeline
    if profile is not None and profile.host is not None:
        executed = replay(model, cluster, profile, knobs, timeline.order(), layout=layout)
    predicted = {"step_us": round(executed.makespan_us, 3), "exposed_comm_us": round(executed.exposed_comm_us(), 3)}
    if executed is not timeline:
        predicted["gpu_only_step_us"] = round(timeline.makespan_us, 3)
    predicted.update(extra or {})
    prof = {} if profile is None else {"name": profile.name, "digest": profile.digest()}
    return Plan(policy, model, cluster, knobs, timeline.order(), prof, predicted, layout)
