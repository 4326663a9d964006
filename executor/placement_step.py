"""Training API over :class:`executor.placement.PlacedMoE`: a step, the gradient reduction and
``apply_placement`` (moving experts with their Adam state). See :mod:`executor.placement`."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from moesched.errors import MoeschedError
from moesched.placement import Placement

from executor.placement import PlacedMoE, check_placements
from executor.shardmove import move_layer


class PlacedStep:
    """``loss = step(x, target)``: forward, backward of this rank's share of the mean loss
    over ranks, and the gradient reduction; then the caller's ``optimizer.step()``."""

    def __init__(self, model: PlacedMoE) -> None:
        self.model = model
        self._groups: dict[tuple[int, ...], object] = {}

    def group(self, ranks: tuple[int, ...]) -> object:
        """The process group of ``ranks`` (made once; every rank of the job must call this
        for the same rank sets in the same order, as ``dist.new_group`` requires)."""
        g = self._groups.get(ranks)
        if g is None:
            g = self._groups[ranks] = dist.new_group(list(ranks))
        return g

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over ranks of mean((y - target)^2) (the reference's loss); gradients reduced."""
        y = self.model(x)
        loss = ((y.float() - target.float()) ** 2).mean()
        (loss / self.model.world).backward()
        self.reduce()
        total = loss.detach().clone()
        dist.all_reduce(total)
        return total / self.model.world

    def reduce(self) -> None:
        """Dense gradients summed over the world; each replicated expert's over the group of
        its replicas (experts in ascending order on every rank; one all-reduce each); none
        for a split expert (each shard's gradient is already whole)."""
        mod = self.model
        dense = [p for p in mod.dense_params()]
        flat = torch.cat([_grad(p).reshape(-1) for p in dense])
        dist.all_reduce(flat)
        _scatter(flat, [p.grad for p in dense])
        for l, plc in enumerate(mod.placements):
            for e, reps in enumerate(plc.replicas):
                if len(reps) < 2 or plc.split[e]:  # a split expert's shards hold disjoint weights
                    continue
                g = self.group(reps)
                if mod.rank in reps:
                    ps = mod.expert(l, e)
                    buf = torch.cat([_grad(p).reshape(-1) for p in ps])
                    dist.all_reduce(buf, group=g)
                    _scatter(buf, [p.grad for p in ps])

    def apply_placement(self, new: Sequence[Placement], optimizer: torch.optim.Optimizer | None = None) -> int:
        """Move to placements ``new`` (one per layer): every added replica gets parameters and
        Adam state from the lowest current holder, every new or changed shard of a split
        expert the rows of its hidden slice from the old holders of them
        (:mod:`executor.shardmove`); slices no longer held are freed; ``optimizer`` (Adam or
        AdamW, or None) follows. Every rank must call it with the same ``new``. Returns the
        number of pieces sent between ranks (one per added replica of an unsplit expert).
        One-line MoeschedError (on every rank, before any communication) for a placement
        that breaks a limit."""
        mod = self.model
        check_placements(new, mod.cfg, mod.world)
        if optimizer is not None and not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            raise MoeschedError(f"apply_placement moves Adam/AdamW state; got {type(optimizer).__name__}")
        copied, group = 0, _expert_group(optimizer, mod)
        for l, (old, nw) in enumerate(zip(mod.placements, new)):
            copied += move_layer(mod, l, old, nw, optimizer, group)
        mod.placements = list(new)
        return copied


def _grad(p: nn.Parameter) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


def _scatter(flat: torch.Tensor, grads: list[torch.Tensor | None]) -> None:
    o = 0
    for g in grads:
        if g is not None:
            g.copy_(flat[o:o + g.numel()].view_as(g))
            o += g.numel()


def _expert_group(opt: torch.optim.Optimizer | None, mod: PlacedMoE) -> dict | None:
    """The optimizer's parameter group holding expert parameters (the last group when this
    rank holds none)."""
    if opt is None:
        return None
    mine = {id(p) for d in mod.experts for p in d.values()}
    for g in opt.param_groups:
        if any(id(p) in mine for p in g["params"]):
            return g
    return opt.param_groups[-1]
