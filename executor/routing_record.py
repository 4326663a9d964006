"""Record the routing of executed steps as a routing trace (:mod:`moesched.routing_trace`).

After a step (:class:`executor.runtime.PlannedStep`, also inside :class:`executor.lm.LMStep`)
every rank holds its copies per expert before capacity, [layers, E]
(:meth:`PlannedStep.expert_counts`). :meth:`RoutingRecorder.record` gathers them over the
world (gloo meta group, a few hundred integers) and rank 0 keeps the rows of EP group 0
(ranks 0..S-1; rank r has EP index r mod S) as one record per layer. Micro-batches of one
optimizer step (``accum`` > 1) add up into that step's records; the header's
``tokens_per_rank`` is then accum x B x L.

    rec = RoutingRecorder(plan.model, plan.cluster.ep_size, source="examples/train_moe_lm.py ...")
    for s in range(steps):
        loss = step(x, t)
        rec.record(step, s)          # every rank calls it (a collective)
    rec.save("routing/run.jsonl")    # rank 0 writes; other ranks do nothing
"""
from __future__ import annotations

import torch.distributed as dist

from moesched.errors import MoeschedError
from moesched.fileio import PathLike
from moesched.models import MoEModel
from moesched.routing_trace import LayerRouting, RoutingTrace, TraceHeader

from executor.runtime import PlannedStep


class RoutingRecorder:
    """Collects per-step routing on rank 0 (module docstring)."""

    def __init__(self, m: MoEModel, ep: int, source: str = "", accum: int = 1):
        self.header = TraceHeader(m.layers, m.experts, ep, m.tokens * accum, m.top_k, m.router, source)
        self.rows: dict[int, list[list[list[int]]]] = {}  # step -> [layer][src][expert]
        self.rank = dist.get_rank() if dist.is_initialized() else 0

    def record(self, step: PlannedStep, step_no: int) -> None:
        """Add the last step's routing to step ``step_no`` (a collective over every rank)."""
        if step_no < 0 or (self.rows and step_no < max(self.rows)):
            raise MoeschedError(f"routing steps must not decrease, got {step_no}")
        counts = step.expert_counts().cpu().tolist()
        world = dist.get_world_size()
        gathered: list = [None] * world
        dist.all_gather_object(gathered, counts, group=step.groups.world_meta)
        if self.rank != 0:
            return
        h = self.header
        new = [[gathered[r][l] for r in range(h.ep)] for l in range(h.layers)]
        old = self.rows.get(step_no)
        self.rows[step_no] = new if old is None else [
            [[a + b for a, b in zip(ra, rb)] for ra, rb in zip(la, lb)] for la, lb in zip(old, new)]

    def trace(self) -> RoutingTrace:
        """The recorded steps (rank 0), validated."""
        if not self.rows:
            raise MoeschedError("no routing was recorded")
        recs = [LayerRouting.from_lists(s, l, rows[l]) for s, rows in sorted(self.rows.items())
                for l in range(self.header.layers)]
        return RoutingTrace(self.header, tuple(recs))

    def save(self, path: PathLike) -> None:
        """Rank 0 writes the trace atomically; other ranks return."""
        if self.rank == 0:
            self.trace().save(path)
