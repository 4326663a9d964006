"""DEP task times priced by a moesched profile (instead of the paper's fitted lines).

Each compute task of the DEP forward pass is priced, in order of precedence:

* ``dep``: from the curve the profile measured of that very task on the model's shape
  (``moesched profile --inference``, :mod:`moesched.depcurves`): attention on an
  attention GPU's m_a S tokens (``dep_attn``), the shared experts on the same tokens
  (``dep_shared``), an expert GPU's E/eg local experts on the m_e E/eg copies it
  receives (``dep_expert@El{E/eg}``), interpolated in tokens or copies;
* else from the profile's training curves (:meth:`moesched.profile.Profile.compute_us`:
  ``shape`` curve, ``ops`` tables, or per-kind ``line``): ``attn_fwd`` (the gate
  included) times the share of its operators the DEP task runs (:func:`_core_share`),
  ``shared_fwd``, and ``expert_fwd`` with E/eg local experts.

A transfer of m_e E M / eg elements per expert GPU is priced as the profile's intra-node
all-to-all of that many bytes (the stand-in for a point-to-point link the profile did not
measure).
"""
from __future__ import annotations

from dataclasses import replace

from moesched.findep import TaskTimes
from moesched.findep_solve import Times
from moesched.models import MoEModel
from moesched.ops import attention_core_ops, task_ops
from moesched.profile import Profile
from moesched.work import attn_fwd_flops, shared_fwd_flops

#: The training kind each DEP task falls back to, and its DEP kind.
TRAINING_KIND = {"attn": "attn_fwd", "shared": "shared_fwd", "expert": "expert_fwd"}
DEP_KIND = {"attn": "dep_attn", "shared": "dep_shared", "expert": "dep_expert"}


def _core_share(profile: Profile, m: MoEModel, tokens: int) -> float:
    """The share of a training ``attn_fwd`` task that a DEP attention task runs (attention,
    norms, router; no merge of the previous layer, no dispatch rows), by the profile's
    operator tables (:func:`moesched.ops.attention_core_ops` over the whole task's
    operators); 1 without operator tables for the model's dtype."""
    dt = profile.ops.run_dtype(m.dtype) if profile.ops is not None else None
    if dt is None:
        return 1.0
    whole = task_ops("attn_fwd", m, tokens, recipe=profile.ops.recipe)
    return profile.ops.ops_us(dt, attention_core_ops(m, tokens)) / profile.ops.ops_us(dt, whole)


def price_sources(m: MoEModel, profile: Profile, eg: int) -> dict[str, str]:
    """Which profile data prices each DEP task (attn, shared, expert) of ``m`` with ``eg``
    expert GPUs: ``dep`` (the task's own curve), else ``shape`` (the training kind's curve on
    this shape), ``ops`` (operator tables) or ``line`` (the per-kind line)."""
    shape, out = m.shape_key(), {}
    by = profile.shapes.get(shape) or {}
    for task, kind in TRAINING_KIND.items():
        el = m.experts // eg if task == "expert" else None
        if profile.dep is not None and profile.dep.curve(shape, DEP_KIND[task], el) is not None:
            out[task] = "dep"
        elif kind in by:
            out[task] = "shape"
        elif profile.ops is not None and profile.ops.run_dtype(m.dtype) is not None:
            out[task] = "ops"
        else:
            out[task] = "line"
    return out


def profile_times(m: MoEModel, profile: Profile, ag: int, eg: int) -> Times:
    """``times(m_a, r2)`` in ms for model ``m`` on ``ag`` attention and ``eg`` expert GPUs."""
    shape, el = m.shape_key(), m.experts // eg
    scope = "intra" if "intra" in (profile.comm.get("all_to_all") or {}) else "world"
    dep = profile.dep

    def own(kind: str, x: float, local_experts: int | None = None) -> float | None:
        """µs from the DEP task's own curve, or None without one."""
        return dep.us(shape, kind, x, local_experts) if dep is not None else None

    def times(m_a: int, r2: int) -> TaskTimes:
        tokens = m_a * m.seq_len
        mm = replace(m, micro_batch=m_a)
        attn = own("dep_attn", tokens)
        if attn is None:
            attn = profile.compute_us("attn_fwd", attn_fwd_flops(mm, tokens), shape, mm) \
                * _core_share(profile, mm, tokens)
        shared = 0.0
        if m.shared_experts:
            shared = own("dep_shared", tokens)
            if shared is None:
                shared = profile.compute_us("shared_fwd", shared_fwd_flops(mm, tokens), shape, mm)
        copies_per_gpu = m_a * ag * m.top_k * m.seq_len / (r2 * eg)       # m_e E / eg
        expert = own("dep_expert", copies_per_gpu, el)
        if expert is None:
            expert_flops = 2.0 * copies_per_gpu * m.d_model * m.ffn_hidden * m.expert_gemms
            expert = profile.compute_us("expert_fwd", expert_flops, shape, mm, eg)  # E/eg local experts
        comm = profile.a2a_us(scope, copies_per_gpu * m.d_model * m.bytes_per_elem)
        return TaskTimes(attn / 1e3, shared / 1e3, expert / 1e3, comm / 1e3)

    return times
