"""A placement schedule: the persistent placements a policy chose over a replay, by step.

Format (JSON, version 1, exact keys)::

    {"format": "moesched.placements", "version": 1, "policy": "moesched",
     "experts": E, "ranks": R, "layers": L,
     "changes": [{"step": s, "layers": [PLACEMENT, ...]}, ...]}

    PLACEMENT = {"ranks": R, "slots": S, "replicas": [[rank, ...], ...]}   (one per layer)
                [, "split": [expert, ...]]   (experts sharded over their ranks; absent when none)

``changes`` are in increasing step order; the first is step 0 (the starting placement).
Before step s the placement of that change takes effect (``moesched placement
--schedule-out``); ``executor.placecheck --schedule`` trains with it and checks it against
the never-moved reference, ``executor.run --plan P --placements`` trains the plan's model
with it and measures the steps and the changes. Every placement is checked (:meth:`Placement.check`): a bad
file is one line, exit 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moesched.errors import MoeschedError
from moesched.fileio import PathLike, read_json, write_json
from moesched.models import MoEModel
from moesched.placement import Placement

FORMAT = "moesched.placements"
VERSION = 1
KEYS = {"format", "version", "policy", "experts", "ranks", "layers", "changes"}


@dataclass(frozen=True)
class PlacementSchedule:
    """``changes``: (step, one placement per layer), steps increasing, the first 0."""

    policy: str
    changes: tuple[tuple[int, tuple[Placement, ...]], ...]

    def __post_init__(self) -> None:
        if not self.changes or self.changes[0][0] != 0:
            raise MoeschedError("placement schedule: the first change must be at step 0")
        steps = [s for s, _ in self.changes]
        if steps != sorted(set(steps)):
            raise MoeschedError("placement schedule: change steps must increase")
        first = self.changes[0][1]
        for s, layers in self.changes:
            if len(layers) != len(first) or any((p.experts, p.ranks) != (first[0].experts, first[0].ranks)
                                                for p in layers):
                raise MoeschedError(f"placement schedule: the change at step {s} differs in layers, experts or ranks")

    @property
    def layers(self) -> int:
        return len(self.changes[0][1])

    @property
    def experts(self) -> int:
        return self.changes[0][1][0].experts

    @property
    def ranks(self) -> int:
        return self.changes[0][1][0].ranks

    def at(self, step: int) -> tuple[Placement, ...] | None:
        """The placements that take effect before ``step``, or None when none changes there."""
        return next((layers for s, layers in self.changes if s == step), None)

    def check_job(self, ranks: int, model: MoEModel | None = None, where: str = "placement schedule") -> None:
        """One-line MoeschedError unless the schedule is for a job of ``ranks`` ranks and, given
        ``model``, places its experts in every one of its layers."""
        if self.ranks != ranks:
            raise MoeschedError(f"{where} is for {self.ranks} ranks, this job has {ranks}")
        if model is not None and (self.experts, self.layers) != (model.experts, model.layers):
            raise MoeschedError(f"{where} places {self.experts} experts in {self.layers} layers, the plan's model "
                                f"{model.name} has {model.experts} experts in {model.layers} layers")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "policy": self.policy, "experts": self.experts,
                "ranks": self.ranks, "layers": self.layers,
                "changes": [{"step": s, "layers": [p.to_dict() for p in ls]} for s, ls in self.changes]}

    def save(self, path: PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, where: str = "placement schedule") -> "PlacementSchedule":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise MoeschedError(f"{where}: not a moesched placement schedule (format {FORMAT!r})")
        if d.get("version") != VERSION or set(d) != KEYS:
            raise MoeschedError(f"{where}: expected version {VERSION} and keys {sorted(KEYS)}")
        if not isinstance(d["changes"], list) or not isinstance(d["policy"], str):
            raise MoeschedError(f"{where}: changes must be a list and policy a string")
        changes = []
        for i, c in enumerate(d["changes"]):
            if not isinstance(c, dict) or set(c) != {"step", "layers"} or not isinstance(c["layers"], list) \
                    or not isinstance(c["step"], int) or isinstance(c["step"], bool):
                raise MoeschedError(f"{where}: changes[{i}] must have an integer step and a list of layers")
            changes.append((c["step"], tuple(Placement.from_dict(p, f"{where}: changes[{i}]") for p in c["layers"])))
        sched = cls(d["policy"], tuple(changes))
        if (sched.experts, sched.ranks, sched.layers) != (d["experts"], d["ranks"], d["layers"]):
            raise MoeschedError(f"{where}: experts, ranks or layers differ from its placements")
        return sched

    @classmethod
    def load(cls, path: PathLike) -> "PlacementSchedule":
        return cls.from_dict(read_json(path, "placement schedule"), f"placement schedule {path}")
