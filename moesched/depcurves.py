"""The optional ``dep`` section of a profile: the forward-only DEP inference tasks
(:data:`moesched.kinds.DEP_KINDS`) timed through the executor's own task functions
(:mod:`executor.dep`) on one device of the target GPU, per model shape
(``MoEModel.shape_key()``), by ``moesched profile --inference``
(:mod:`executor.profiling.dep`)::

    "dep": {SHAPE_KEY: {"dep_attn": COST,          # x = tokens of a micro-batch (m_a S)
                        "dep_shared": COST,        # x = tokens (models with shared experts)
                        "dep_expert@El8": COST,    # x = copies an expert GPU receives,
                        ...}}                      #     El = 8 local experts (E / eg)

COST is a :class:`moesched.cost.Cost` with its measured points (at least two):
interpolated piecewise linearly between them, its fitted line outside them
(:mod:`moesched.costs.fit`). A profile without the section (every profile measured before
it) prices DEP tasks from its training curves (:mod:`moesched.findep_profile`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from moesched.cost import Cost
from moesched.errors import MoeschedError
from moesched.kinds import DEP_KINDS

_EXPERT_KEY = re.compile(r"dep_expert@El([1-9][0-9]{0,5})")


def dep_key(kind: str, local_experts: int | None = None) -> str:
    """The curve key of DEP task ``kind``: ``dep_expert@El{local_experts}`` for the expert
    task (its curve depends on the number of local experts), the kind itself otherwise."""
    if kind not in DEP_KINDS:
        raise ValueError(f"unknown DEP task kind {kind!r}; expected one of {DEP_KINDS}")
    if kind == "dep_expert":
        if local_experts is None or local_experts < 1:
            raise ValueError(f"dep_expert needs local_experts >= 1, got {local_experts}")
        return f"dep_expert@El{local_experts}"
    return kind


def _valid_key(key: Any) -> bool:
    return isinstance(key, str) and (key in ("dep_attn", "dep_shared") or _EXPERT_KEY.fullmatch(key) is not None)


@dataclass(frozen=True)
class DepCurves:
    """Shape key -> curve key (:func:`dep_key`) -> measured cost (µs of tokens or copies)."""

    shapes: dict[str, dict[str, Cost]] = field(default_factory=dict)

    def curve(self, shape: str, kind: str, local_experts: int | None = None) -> Cost | None:
        """The measured curve of ``kind`` on ``shape`` (and ``local_experts`` for
        ``dep_expert``), or None when the profile did not measure it."""
        return self.shapes.get(shape, {}).get(dep_key(kind, local_experts))

    def us(self, shape: str, kind: str, x: float, local_experts: int | None = None) -> float | None:
        """µs of DEP task ``kind`` on x tokens (attention, shared) or copies (expert), or
        None without a curve for it."""
        c = self.curve(shape, kind, local_experts)
        return None if c is None else c(x)

    def to_dict(self) -> dict[str, Any]:
        return {s: {k: c.to_dict() for k, c in sorted(by.items())} for s, by in sorted(self.shapes.items())}

    @classmethod
    def from_dict(cls, d: Any) -> "DepCurves":
        """Parse and check a ``dep`` section; problems are one-line :class:`MoeschedError`
        starting "profile: dep..." (the profile reader names the file)."""
        if not isinstance(d, dict) or not all(isinstance(s, str) and isinstance(by, dict) and by
                                              for s, by in d.items()):
            raise MoeschedError("profile: dep must map shape keys to non-empty {curve: cost} objects")
        shapes: dict[str, dict[str, Cost]] = {}
        for s, by in d.items():
            bad = sorted(str(k) for k in by if not _valid_key(k))
            if bad:
                raise MoeschedError(f"profile: dep.{s} has unknown curves {bad[:3]} (expected dep_attn, "
                                    "dep_shared, dep_expert@El<local experts>)")
            shapes[s] = {k: Cost.from_dict(c, f"dep.{s}.{k}") for k, c in by.items()}
            short = [k for k, c in shapes[s].items() if len(c.points) < 2]
            if short:
                raise MoeschedError(f"profile: dep.{s}.{short[0]} needs at least 2 measured points")
        return cls(shapes)

