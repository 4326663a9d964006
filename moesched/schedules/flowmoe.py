"""FlowMoE: attention joins the chunk pipeline, gradients in S_p-byte chunks that yield
the link to any all-to-all, S_p tuned on measured (here: simulated) step times.

FlowMoE (NeurIPS'25, Sec. 3.2) splits each block's input into R micro-chunks (default
R=2) so MHA + gating (AT) pipeline with the all-to-alls; the comm stream runs
D_1..D_R then C_1..C_R (ScheMoE order). Gradient all-reduce is cut into S_p-byte chunks
in a pool with priority A2A > AR. S_p is chosen by Bayesian optimisation over
[128 KiB, 16 MiB] of measured iteration times (Sec. 3.3).
"""
from __future__ import annotations

from moesched.cluster import Cluster
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.schedules.base import Schedule, evaluate, seq_priority
from moesched.schedules.priorities import MAX_GRAD_CHUNKS, degrees, n_grad_chunks, theorem1

NAME = "flowmoe"
PAPER = "FlowMoE, Gao et al., NeurIPS'25 (arXiv 2510.00207)"
SUMMARY = "R=2 with attention chunked along samples, A2A > AR priority, AR chunk size S_p tuned on the simulator"

#: FlowMoE's default R (Sec. 3.3: set by hand, default 2).
DEGREE = 2
#: Points of FlowMoE's S_p search range Real(128 KiB, 16 MiB) (train_w_FlowMoE_BO_V2.py).
SP_CANDIDATES = (128 * 2**10, 512 * 2**10, 2 * 2**20, 8 * 2**20, 16 * 2**20)

PRIORITY = theorem1(seq_priority)  # A2A order of FlowMoE Sec. 3.2; grad chunks last (A2A > AR)


def knobs_for(model: MoEModel, sp_bytes: int) -> Knobs:
    """R=2 with AT chunks when the micro-batch divides by 2 (chunks split along samples, so
    attention stays exact), else R=2 on the MoE part only (1 if 2 does not divide tokens)."""
    at = DEGREE in degrees(model, at_chunked=True)
    r = DEGREE if DEGREE in degrees(model) else 1
    return Knobs.uniform(model.layers, r, at_chunked=at, grad_chunk_bytes=sp_bytes, grad_sync="overlap", a2a="flat")


def schedule(model: MoEModel, cluster: Cluster, profile: Profile) -> Schedule:
    """Simulate every S_p candidate (a grid over FlowMoE's BO range instead of GP+EI) and
    keep the fastest; ties go to the larger S_p (fewer chunks). Candidates giving more
    than MAX_GRAD_CHUNKS chunks are skipped (the 16 MiB one is kept if all are)."""
    cands = [s for s in SP_CANDIDATES if n_grad_chunks(model, cluster, s) <= MAX_GRAD_CHUNKS] or [SP_CANDIDATES[-1]]
    times: dict[int, float] = {}
    for sp in cands:
        times[sp] = evaluate(model, cluster, profile, Schedule(NAME, knobs_for(model, sp), PRIORITY)).step_us
    best = min(cands, key=lambda s: (times[s], -s))
    knobs = knobs_for(model, best)
    notes = {"R": knobs.r_fwd[0], "at_chunked": knobs.at_chunked, "S_p_bytes": best,
             "S_p_step_us": {str(s): round(t, 3) for s, t in times.items()},
             "attention": ("chunked along samples (exact)" if knobs.at_chunked else
                           f"not chunked: micro_batch={model.micro_batch} is not divisible by {DEGREE}")}
    return Schedule(NAME, knobs, PRIORITY, notes)
