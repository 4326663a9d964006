"""DEP task times priced by a moesched profile (instead of the paper's fitted lines).

Each DEP task is one of the executor's forward tasks on the profile's measured curves
(:meth:`moesched.profile.Profile.compute_us`: shape curve, operator tables, or per-kind
line): attention on an attention GPU's m_a S tokens (``attn_fwd``, the gate included, times
the share of its operators the DEP task runs: :func:`_core_share`),
the shared experts on the same tokens (``shared_fwd``), an expert GPU's E/eg experts on its
m_e E/eg copies (``expert_fwd``), and a transfer of m_e E M / eg elements per expert GPU
priced as the profile's intra-node all-to-all of that many bytes (the stand-in for a
point-to-point link the profile did not measure).
"""
from __future__ import annotations

from dataclasses import replace

from moesched.findep import TaskTimes
from moesched.findep_solve import Times
from moesched.models import MoEModel
from moesched.ops import attention_core_ops, task_ops
from moesched.profile import Profile
from moesched.work import attn_fwd_flops, shared_fwd_flops


def _core_share(profile: Profile, m: MoEModel, tokens: int) -> float:
    """The share of a training ``attn_fwd`` task that a DEP attention task runs (attention,
    norms, router; no merge of the previous layer, no dispatch rows), by the profile's
    operator tables (:func:`moesched.ops.attention_core_ops` over the whole task's
    operators); 1 without operator tables for the model's dtype."""
    dt = profile.ops.run_dtype(m.dtype) if profile.ops is not None else None
    if dt is None:
        return 1.0
    return profile.ops.ops_us(dt, attention_core_ops(m, tokens)) / profile.ops.ops_us(dt, task_ops("attn_fwd", m, tokens))


def profile_times(m: MoEModel, profile: Profile, ag: int, eg: int) -> Times:
    """``times(m_a, r2)`` in ms for model ``m`` on ``ag`` attention and ``eg`` expert GPUs."""
    shape = m.shape_key()
    scope = "intra" if "intra" in (profile.comm.get("all_to_all") or {}) else "world"

    def times(m_a: int, r2: int) -> TaskTimes:
        tokens = m_a * m.seq_len
        mm = replace(m, micro_batch=m_a)
        attn = profile.compute_us("attn_fwd", attn_fwd_flops(mm, tokens), shape, mm) * _core_share(profile, mm, tokens)
        shared = profile.compute_us("shared_fwd", shared_fwd_flops(mm, tokens), shape, mm) if m.shared_experts else 0.0
        copies_per_gpu = m_a * ag * m.top_k * m.seq_len / (r2 * eg)       # m_e E / eg
        expert_flops = 2.0 * copies_per_gpu * m.d_model * m.ffn_hidden * m.expert_gemms
        expert = profile.compute_us("expert_fwd", expert_flops, shape, mm, eg)  # E/eg local experts
        comm = profile.a2a_us(scope, copies_per_gpu * m.d_model * m.bytes_per_elem)
        return TaskTimes(attn / 1e3, shared / 1e3, expert / 1e3, comm / 1e3)

    return times
