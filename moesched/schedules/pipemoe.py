"""PipeMoE: the pipeline degree r per layer from an alpha-beta cost model.

PipeMoE (INFOCOM'23) models one MoE layer split into r chunks as a pipeline of the
dispatch all-to-all, the experts and the combine all-to-all, and picks the r minimising
its time. Here each stage's per-chunk time comes from the profile, and gradients are
reduced by PyTorch DDP (25 MB buckets, issued when ready), as in Tutel-based stacks.
"""
from __future__ import annotations

from moesched.cluster import Cluster
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.schedules.base import Schedule, ready_priority
from moesched.schedules.priorities import DDP_BUCKET_BYTES, degrees, t_a2a_us, t_exp_us

NAME = "pipemoe"
PAPER = "PipeMoE, Shi et al., INFOCOM'23 (DOI 10.1109/INFOCOM53939.2023.10228874)"
SUMMARY = "per-layer r minimising the pipelined A2A-expert-A2A time model, DDP 25 MB buckets issued when ready"


def model_time_us(model: MoEModel, cluster: Cluster, profile: Profile, r: int, backward: bool) -> float:
    """Pipelined time of one MoE layer at degree r, µs.

    Two-stage pipeline (comm stage = both all-to-alls of a chunk, compute stage = its
    experts), our two-stage form of PipeMoE's alpha-beta pipeline model (INFOCOM'23):
        T(r) = 2*t_a2a(r) + t_e(r) + (r-1) * max(t_e(r), 2*t_a2a(r))
    with t_a2a(r) the all-to-all of bytes/r and t_e(r) the experts on flops/r (in backward
    dX + dW, i.e. the expert cost doubled).
    """
    ta = t_a2a_us(model, cluster, profile, r)
    te = t_exp_us(model, profile, r, backward)
    return 2 * ta + te + (r - 1) * max(te, 2 * ta)


def best_degree(model: MoEModel, cluster: Cluster, profile: Profile, backward: bool) -> int:
    """argmin over integer r in 1..16 dividing the tokens of :func:`model_time_us`
    (smallest r on ties)."""
    return min(degrees(model), key=lambda r: (model_time_us(model, cluster, profile, r, backward), r))


def schedule(model: MoEModel, cluster: Cluster, profile: Profile) -> Schedule:
    """r_fwd, r_bwd from the model (layers are identical, so one degree serves all), DDP
    buckets of 25 MiB overlapped with backward under ``ready_priority``."""
    rf = best_degree(model, cluster, profile, backward=False)
    rb = best_degree(model, cluster, profile, backward=True)
    knobs = Knobs.uniform(model.layers, rf, rb, grad_chunk_bytes=DDP_BUCKET_BYTES, grad_sync="overlap", a2a="flat")
    return Schedule(NAME, knobs, ready_priority, {"r_fwd": rf, "r_bwd": rb, "grad_chunk_bytes": DDP_BUCKET_BYTES})
