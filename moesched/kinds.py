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
