"""Training that follows a placement schedule: ``executor.run --plan P --placements S``.

The plan's model runs as :class:`executor.placement.PlacedMoE` under
:class:`executor.placement_step.PlacedStep` (the one unchunked step: forward, backward, the
gradient reduction; no pipeline chunks, one dense gradient all-reduce after backward) with
Adam (learning rate :data:`LR`), starting from the schedule's step-0 placement.

Steps are counted from 0 over the whole job, warm-up included: with ``--warmup W --steps N``
steps 0..W-1 are the warm-up and W..W+N-1 the timed ones. The schedule's change at step
s >= 1 is applied before step s (:meth:`PlacedStep.apply_placement`: parameters and Adam
state of every added replica sent from its holder); a change at a step >= W+N is never
applied and is reported as such. A change is timed on its own, between barriers, as the
slowest rank's time (ms); a step's time (s) covers forward, backward and the gradient
reduction, as the planned step's does, and leaves out the changes and the Adam update.

:func:`placed_adam` and :func:`change_before` are shared with :mod:`executor.placecheck`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from moesched.errors import MoeschedError
from moesched.models import MoEModel
from moesched.placement import Placement
from moesched.placement_schedule import PlacementSchedule
from moesched.plan import Plan

from executor.layers import make_batch
from executor.placement import PlacedMoE, model_problem
from executor.placement_step import PlacedStep

#: Adam's learning rate in placement runs and :mod:`executor.placecheck`.
LR = 1e-2


@dataclass(frozen=True)
class ChangeDone:
    """One applied change: its step, the replicas it copied, the slowest rank's time (ms)."""

    step: int
    moved: int
    ms: float


@dataclass(frozen=True)
class PlacedRun:
    """What a placement run measured: the timed steps' times (s), the last step's loss, the
    changes applied and the steps of the changes past the last step (never applied)."""

    times_s: tuple[float, ...]
    loss: float
    done: tuple[ChangeDone, ...]
    skipped: tuple[int, ...]

    def report(self) -> str:
        """One line: changes applied of the schedule's, experts moved, each change's time."""
        n = len(self.done) + len(self.skipped)
        each = ", ".join(f"{c.ms:.3f} ms before step {c.step}" for c in self.done)
        line = (f"{len(self.done)} of {n} placement changes applied, "
                f"{sum(c.moved for c in self.done)} experts moved" + (f" ({each})" if each else ""))
        if self.skipped:
            line += f"; past the last step: {', '.join(f'step {s}' for s in self.skipped)}"
        return line


def load_for(plan: Plan, path: str, world: int) -> PlacementSchedule:
    """The placement schedule at ``path``, checked against ``plan`` and a job of ``world``
    ranks; one-line MoeschedError for a schedule or a plan a placement run cannot follow.
    The plan's knobs are not followed: the placed step is unchunked (:func:`unchunked_note`)."""
    if plan.layout is not None:
        raise MoeschedError(f"--placements: this is a {plan.layout.label()} layout plan; placements run "
                            "expert-parallel plans only")
    what = model_problem(plan.model)
    if what is not None:
        raise MoeschedError(f"--placements: the placed model does not run {what} of {plan.model.name}")
    if plan.cluster.ep_size != plan.cluster.world:
        raise MoeschedError(f"--placements places experts over all {plan.cluster.world} ranks; the plan's "
                            f"expert-parallel group is {plan.cluster.ep_size} ranks")
    sched = PlacementSchedule.load(path)
    sched.check_job(world, plan.model, where=f"placement schedule {path}")
    return sched


def unchunked_note(plan: Plan) -> str | None:
    """The line that says which of the plan's knobs the unchunked placed step leaves out
    (pipeline degree, gradient chunks, hierarchical all-to-all), or None."""
    chunked = plan.knobs.chunking()
    if chunked is None:
        return None
    return (f"note: the placed step is unchunked (pipeline degree 1, one gradient all-reduce, flat all-to-all); "
            f"not applied: the plan's {chunked}")


def placed_adam(m: MoEModel, placements: Sequence[Placement], rank: int, world: int, seed: int = 0,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                lr: float = LR) -> tuple[PlacedStep, torch.optim.Adam]:
    """This rank's placed model, its step and Adam over its parameters (one group)."""
    mod = PlacedMoE(m, placements, rank, world, seed=seed, device=device, dtype=dtype)
    return PlacedStep(mod), torch.optim.Adam(list(mod.parameters()), lr=lr)


def change_before(step: PlacedStep, opt: torch.optim.Optimizer, sched: PlacementSchedule, s: int) -> int | None:
    """Apply the schedule's change due before step ``s`` (none before step 0: the starting
    placement); the replicas it copied, or None when no change is due."""
    new = sched.at(s) if s > 0 else None
    return None if new is None else step.apply_placement(new, opt)


def train(plan: Plan, sched: PlacementSchedule, rank: int, world: int, warmup: int, steps: int, seed: int,
          device: torch.device, dtype: torch.dtype) -> PlacedRun:
    """``warmup + steps`` Adam steps of the plan's model on this rank's synthetic batch,
    following ``sched`` (every rank calls it with the same arguments but ``rank``)."""
    m = plan.model
    step, opt = placed_adam(m, sched.changes[0][1], rank, world, seed, device, dtype)
    x, t = make_batch(m, rank, seed, device=device, dtype=dtype)
    times, done, loss = [], [], 0.0
    for s in range(warmup + steps):
        done += _timed_change(step, opt, sched, s, device)
        dist.barrier()
        t0 = time.perf_counter()
        loss = float(step(x, t))  # the all-reduced loss: a host copy that waits for the step
        _sync(device)
        if s >= warmup:
            times.append(time.perf_counter() - t0)
        opt.step()
        opt.zero_grad(set_to_none=False)
    slow = torch.tensor([c.ms for c in done], dtype=torch.float64)
    if len(done):
        dist.all_reduce(slow, op=dist.ReduceOp.MAX)
    done = [ChangeDone(c.step, c.moved, float(ms)) for c, ms in zip(done, slow.tolist())]
    skipped = tuple(s for s, _ in sched.changes if s >= warmup + steps)
    return PlacedRun(tuple(times), loss, tuple(done), skipped)


def _timed_change(step: PlacedStep, opt: torch.optim.Optimizer, sched: PlacementSchedule, s: int,
                  device: torch.device) -> list[ChangeDone]:
    """The change due before step ``s``, applied and timed on this rank (ms), or nothing."""
    if s == 0 or sched.at(s) is None:
        return []
    dist.barrier()
    t0 = time.perf_counter()
    moved = change_before(step, opt, sched, s)
    _sync(device)
    return [ChangeDone(s, int(moved or 0), (time.perf_counter() - t0) * 1e3)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
