"""The task kinds of the training-step graph (:mod:`moesched.graph`), one list for every module.

Compute kinds take x = FLOPs (``loss``: elements of the layer output, T*M) in a profile;
all-to-all kinds move the routed token copies between ranks.
"""
from __future__ import annotations

#: Compute kinds every profile prices.
COMPUTE_KINDS = ("attn_fwd", "attn_bwd", "expert_fwd", "expert_dx", "expert_dw", "shared_fwd", "shared_bwd")
#: Optional compute kinds: a profile without them costs them 0 µs. "loss": merge of the last
#: layer, loss and its gradient.
OPTIONAL_COMPUTE_KINDS = ("loss",)
ALL_COMPUTE_KINDS = COMPUTE_KINDS + OPTIONAL_COMPUTE_KINDS
#: The all-to-alls of one MoE layer: forward dispatch and combine, backward combine and dispatch.
A2A_KINDS = ("dispatch", "combine", "combine_bwd", "dispatch_bwd")
#: Communication of a tensor-parallel group (:mod:`moesched.layouts`): all-reduce, and the
#: reduce-scatter / all-gather pair of sequence parallelism; the collective of each.
TP_COMM_KINDS = ("tp_ar", "tp_rs", "tp_ag")
TP_OP_OF_KIND = {"tp_ar": "all_reduce", "tp_rs": "reduce_scatter", "tp_ag": "all_gather"}
#: The forward-only tasks of disaggregated (DEP) inference (:mod:`moesched.findep`), timed
#: by the profiler's ``--inference`` pass through :mod:`executor.dep`'s own task functions
#: on one device (:mod:`executor.profiling.dep`) and kept per model shape in the profile's
#: ``dep`` section (:mod:`moesched.depcurves`). Unlike the training kinds, x is a count:
#:
#: * ``dep_attn``: an attention GPU's attention, norms and router on m_a S tokens
#:   (x = tokens of the micro-batch);
#: * ``dep_shared``: the shared experts on the same tokens (x = tokens; models with shared
#:   experts only);
#: * ``dep_expert``: an expert GPU's El = E/eg local experts on the routed copies it
#:   receives, with the task's own gather/scatter around the expert GEMMs (x = copies); one
#:   curve per El.
DEP_KINDS = ("dep_attn", "dep_shared", "dep_expert")
