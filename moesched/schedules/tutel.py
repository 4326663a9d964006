"""Tutel: fixed-degree all-to-all/expert pipelining, gradients by PyTorch DDP.

Tutel splits the dispatched tensor along the capacity dimension into
``a2a_ffn_overlap_degree`` chunks, forward and backward (tutel/impls/overlap.py). The
degree is a user flag; ScheMoE, FSMoE and FlowMoE ran the Tutel baseline at 2. Gradient
reduction is left to torch DDP: 25 MB buckets, each all-reduced as soon as it fills,
with no priority between all-to-all and all-reduce.
"""
from __future__ import annotations

from moesched.cluster import Cluster
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.schedules.base import Schedule, ready_priority
from moesched.schedules.priorities import DDP_BUCKET_BYTES, degrees

NAME = "tutel"
PAPER = "Tutel, Hwang et al., MLSys'23 (arXiv 2206.03382)"
SUMMARY = "a2a_ffn_overlap_degree=2 in forward and backward, flat all-to-all, DDP 25 MB buckets issued when ready"

#: The degree the baselines of ScheMoE/FSMoE/FlowMoE used for Tutel.
DEGREE = 2


def schedule(model: MoEModel, cluster: Cluster, profile: Profile) -> Schedule:
    """r=2 everywhere (r=1 if 2 does not divide the tokens), DDP buckets of 25 MiB
    overlapped with backward, each issued when ready (``ready_priority``)."""
    r = DEGREE if DEGREE in degrees(model) else 1
    knobs = Knobs.uniform(model.layers, r, grad_chunk_bytes=DDP_BUCKET_BYTES, grad_sync="overlap", a2a="flat")
    return Schedule(NAME, knobs, ready_priority, {"r": r, "grad_chunk_bytes": DDP_BUCKET_BYTES})
