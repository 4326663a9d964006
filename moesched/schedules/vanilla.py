"""vanillaEP: DeepSpeed-MoE's MoE layer as the papers' baseline, with no overlap at all.

DeepSpeed-MoE's ``MOELayer.forward`` is serial (gate -> dispatch all-to-all -> experts ->
combine all-to-all, synchronous ``all_to_all_single``); FlowMoE and FSMoE use it as the
"vanillaEP"/"DS-MoE" baseline. Gradients are reduced in one bucket after backward.
"""
from __future__ import annotations

from moesched.cluster import Cluster
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.schedules.base import Schedule, seq_priority

NAME = "vanilla"
PAPER = "DeepSpeed-MoE, Rajbhandari et al., ICML'22 (arXiv 2201.05596)"
SUMMARY = "serial expert parallelism: r=1, every task waits for the previous one, one all-reduce after backward"


def schedule(model: MoEModel, cluster: Cluster, profile: Profile) -> Schedule:
    """r=1 in every layer, ``serialize`` (a chain in creation order, so the step time is
    the sum of all task durations, µs), gradients in one bucket after backward."""
    knobs = Knobs.uniform(model.layers, 1, at_chunked=False, grad_chunk_bytes=None,
                          grad_sync="after_backward", a2a="flat", serialize=True)
    return Schedule(NAME, knobs, seq_priority, {"r": 1, "grad_chunk_bytes": None})
