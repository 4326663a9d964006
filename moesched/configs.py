"""Configuration sets: named model shapes for profiling, validation and peer runs.

JSON: a list of ``{"name": str, "model": {MoEModel fields}}`` objects, e.g.
``docs/validation_configs.json``. ``models_from_spec`` also accepts a comma list of
preset names, as ``--models`` takes either.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from moesched.errors import MoeschedError
from moesched.fileio import read_json
from moesched.models import MoEModel

#: A configuration's name: it names trace files and CSV rows.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


@dataclass(frozen=True)
class Config:
    name: str
    model: MoEModel


def load_configs(path: str | os.PathLike) -> list[Config]:
    """Read a configuration set; raise MoeschedError on a malformed file."""
    d = read_json(path, "configs")
    if not isinstance(d, list) or not d:
        raise MoeschedError(f"configs {path}: expected a non-empty JSON list of {{name, model}} objects")
    out = []
    for i, c in enumerate(d):
        if not isinstance(c, dict) or set(c) != {"name", "model"}:
            raise MoeschedError(f"configs {path}: entry {i} must have exactly the keys name, model")
        if not isinstance(c["name"], str) or not NAME.fullmatch(c["name"]):
            raise MoeschedError(f"configs {path}: entry {i}'s name {c['name']!r:.40} must be 1-100 letters, digits "
                                f"and . _ + - (it names files), starting with a letter or digit")
        try:
            out.append(Config(c["name"], MoEModel.from_dict(c["model"])))
        except MoeschedError as e:
            raise MoeschedError(f"configs {path}: entry {i} ({c.get('name')}): {e}") from None
    if len({c.name for c in out}) != len(out):
        raise MoeschedError(f"configs {path}: names must be unique")
    return out


def models_from_spec(spec: str) -> list[MoEModel]:
    """Models from "A,B" (preset names) or a configs JSON path (one model per distinct shape)."""
    if spec.endswith(".json"):
        seen: dict[str, MoEModel] = {}
        for c in load_configs(spec):
            seen.setdefault(c.model.shape_key(), c.model)
        return list(seen.values())
    return [MoEModel.from_name(n) for n in spec.split(",") if n]
