"""ScheMoE (EuroSys'24): Tutel's pipelining at r=2 with the task order of its Theorem 1.

What ScheMoE has (paper Sec. 3-5, code ``Fragile-azalea/ScheMoE``):

1. OptSche, Theorem 1 (exchange argument): for any r the best order issues every chunk's
   dispatch all-to-all before any combine all-to-all, compute in chunk order (backward
   the mirror image); r itself is left to PipeMoE/Tutel and fixed at 2 in all experiments.
2. Pipe-A2A: one all-to-all's P send/recv pairs split into the intra-node and the
   inter-node set, issued at once on two NCCL communicators and streams, so that it takes
   max(intra part, inter part) instead of their sum.
3. ZFP compression of the all-to-all payload (about 4x fewer bytes) with compress and
   decompress kernels on the compute stream.

What this policy models: (1) only, over Tutel's schedule (r=2, flat all-to-all, DDP
25 MiB gradient buckets issued when ready). In this task graph it gives the same step as
Tutel on every layer: with attention unchunked both dispatches of a layer are ready
together and each combine becomes ready only after its expert, so the greedy ready order
Tutel's list scheduling follows already is Theorem 1's order. (2) is not modelled: the
profiles measure whole all-to-alls per scope, not their intra- and inter-node pair sets
apart, and the executor has no two-stream all-to-all; on one node (the NVLink and
host-memory regimes) Pipe-A2A is a flat all-to-all anyway. (3) is not modelled: it
changes the numerics and needs compressor costs the profiles do not have. So ScheMoE's
results here equal Tutel's: the comparison shows Theorem 1 adds nothing over greedy
ready order in this model, not that ScheMoE's system would not beat Tutel.
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
#: What this model leaves out of the paper's system (printed by ``moesched schedules``).
LIMITS = ("Pipe-A2A (intra- and inter-node pairs on two streams) and ZFP compression; only the Theorem-1 "
          "order is, and it equals tutel's greedy order here, so its step equals tutel's")

#: ScheMoE leaves r to PipeMoE/Tutel and uses r=2 throughout its evaluation.
DEGREE = 2


def schedule(model: MoEModel, cluster: Cluster, profile: Profile) -> Schedule:
    """r=2 (1 if 2 does not divide the tokens); priorities: ScheMoE Theorem 1 over
    ``ready_priority`` (gradient buckets still issued when ready); flat all-to-all. Equal
    to Tutel's step in this model (see the module docstring for why, and for what is left
    out: Pipe-A2A and ZFP compression)."""
    r = DEGREE if DEGREE in degrees(model) else 1
    knobs = Knobs.uniform(model.layers, r, grad_chunk_bytes=DDP_BUCKET_BYTES, grad_sync="overlap", a2a="flat")
    return Schedule(NAME, knobs, theorem1(ready_priority), {"r": r, "grad_chunk_bytes": DDP_BUCKET_BYTES,
                                                            "simplified": LIMITS})
