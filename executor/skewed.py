"""Imbalanced steps for validation: a skewed selection bias, and the step priced under its
own per-expert load.

``moesched validate --skew X`` runs every configuration whose router is ``deepseek_v3``
with its selection bias (the buffer ``e_bias`` [E] that DeepSeek-V3's auxiliary-loss-free
balancing learns, Sec. 2.1.2) set to ``-X * ln(1 + e)`` for expert ``e``: low-numbered
experts are picked more often, as after the balancing has drifted. X = 0 keeps the bias at
zero. The bias only selects experts; the gate weights stay the sigmoid scores, so the
step's loss and gradients stay those of the model with that bias.

:func:`uneven_prediction` replays the plan under the last step's recorded load, per layer
and per local expert (:func:`moesched.imbalance.step_timeline`: each rank's own copies,
grouped GEMMs on uneven groups), and returns it with the load's max / mean over experts.
"""
from __future__ import annotations

import torch

from moesched.imbalance import step_load, step_timeline
from moesched.plan import Plan
from moesched.profile import Profile
from moesched.sim import Timeline

from executor.layers import MoEModule
from executor.routing_record import RoutingRecorder
from executor.runtime import PlannedStep


def apply_skew(module: MoEModule, skew: float) -> None:
    """Set every MoE block's selection bias to ``-skew * ln(1 + e)`` (module docstring)."""
    for blk in module.blocks:
        if not blk.dense and skew > 0:
            e = torch.arange(blk.e_bias.numel(), device=blk.e_bias.device, dtype=torch.float32)
            blk.e_bias.copy_(-skew * torch.log1p(e))


def record_step(step: PlannedStep, plan: Plan) -> RoutingRecorder:
    """The last step's routing as a one-step trace (a collective: every rank calls it)."""
    rec = RoutingRecorder(plan.model, plan.cluster.ep_size, source="moesched validate")
    rec.record(step, 0)
    return rec


def uneven_prediction(plan: Plan, profile: Profile, rec: RoutingRecorder) -> tuple[Timeline, float] | None:
    """Rank 0: (the plan's timeline under the recorded step's per-expert load, that load's
    max / mean copies per expert over layers); None for a layout plan (no such replay)."""
    if plan.layout is not None:
        return None
    trace = rec.trace()
    m, ep = plan.model, plan.cluster.ep_size
    sl = step_load(trace, trace.steps[0], m, ep)
    tl = step_timeline(m, plan.cluster, profile, plan.knobs, plan.order, sl)
    ratios = []
    for layer in sl.groups:
        per_expert = [c for rank in layer for c in rank]
        mean = sum(per_expert) / len(per_expert)
        ratios.append(max(per_expert) / mean if mean else 1.0)
    return tl, max(ratios)
