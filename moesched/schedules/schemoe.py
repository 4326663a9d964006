"""ScheMoE: Tutel's pipelining at r=2 with the optimal task order of Theorem 1.

ScheMoE (EuroSys'24) proves (Theorem 1, exchange argument) that for any r the best order
issues every chunk's dispatch all-to-all before any combine all-to-all (and backward the
mirror image); compute runs in chunk order. It fixes r=2 in all experiments. Gradients
as in its Tutel base: DDP 25 MB buckets issued when ready.
"""
from __future__ import annotations

from moesched.cluster import Cluster
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.schedules.base import Schedule, ready_priority
from moesched.schedules.priorities import DDP_BUCKET_BYTES, degrees, theorem1

NAME = "schemoe"
PAPER = "ScheMoE, Shi et al., EuroSys'24 (DOI 10.1145/3627703.3650083)"
SUMMARY = "r=2, Theorem-1 order (all dispatch A2As before any combine A2A per layer), DDP 25 MB buckets"

#: ScheMoE leaves r to PipeMoE/Tutel and uses r=2 throughout its evaluation.
DEGREE = 2


def schedule(model: MoEModel, cluster: Cluster, profile: Profile) -> Schedule:
    """r=2 (1 if 2 does not divide the tokens); priorities: ScheMoE Theorem 1 over
    ``ready_priority`` (gradient buckets still issued when ready). Compression (ZFP)
    and Pipe-A2A are not modelled: flat all-to-all."""
    r = DEGREE if DEGREE in degrees(model) else 1
    knobs = Knobs.uniform(model.layers, r, grad_chunk_bytes=DDP_BUCKET_BYTES, grad_sync="overlap", a2a="flat")
    return Schedule(NAME, knobs, theorem1(ready_priority), {"r": r, "grad_chunk_bytes": DDP_BUCKET_BYTES,
                                                            "simplified": "no ZFP compression, no Pipe-A2A"})
