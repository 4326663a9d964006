"""The published schedules, one module each, registered by name.

Each module defines ``NAME``, ``PAPER`` (citation) and ``schedule(model, cluster,
profile) -> Schedule``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from moesched.errors import MoeschedError

#: Policy name -> module, in the order the tables print them.
POLICIES = ("vanilla", "tutel", "pipemoe", "schemoe", "fsmoe", "lina", "flowmoe")


def get(name: str) -> ModuleType:
    """The policy module called ``name``."""
    if name not in POLICIES:
        raise MoeschedError(f"unknown schedule {name!r}; known: {', '.join(POLICIES)}")
    return importlib.import_module(f"moesched.schedules.{name}")


def parse_list(text: str | None) -> list[str]:
    """Parse a comma list of policy names ("all" or None = every policy)."""
    if not text or text == "all":
        return list(POLICIES)
    names = [x.strip() for x in text.split(",") if x.strip()]
    for n in names:
        get(n)
    return names
