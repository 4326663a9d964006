"""Lina: DeepSpeed-MoE without A2A pipelining, the all-reduce cut into small chunks and
every all-to-all prioritised over them.

Lina (ATC'23) splits the gradient all-reduce into micro-ops ("tensor partitioning") so
an all-to-all never waits behind a long all-reduce. FSMoE's PipeMoE+Lina baseline uses
fixed 30 MB chunks; we take that size. Unlike vanillaEP nothing is forced serial.
"""
from __future__ import annotations

from moesched.cluster import Cluster
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.schedules.base import Schedule, seq_priority
from moesched.schedules.priorities import LINA_CHUNK_BYTES

NAME = "lina"
PAPER = "Lina, Li et al., USENIX ATC'23 (arXiv 2210.17223)"
SUMMARY = "r=1, gradient all-reduce in 30 MB chunks overlapped with backward, all-to-all always before all-reduce"


def schedule(model: MoEModel, cluster: Cluster, profile: Profile) -> Schedule:
    """r=1, chunks of 30 MiB; ``seq_priority`` ranks every gradient chunk after every
    all-to-all (chunks carry the largest ``seq``), so a ready A2A always goes first
    (Lina's A2A-over-all-reduce priority; a running chunk is not preempted)."""
    knobs = Knobs.uniform(model.layers, 1, grad_chunk_bytes=LINA_CHUNK_BYTES, grad_sync="overlap", a2a="flat")
    return Schedule(NAME, knobs, seq_priority, {"r": 1, "grad_chunk_bytes": LINA_CHUNK_BYTES})
