"""Training API over :class:`executor.placement.PlacedMoE`: a step, the gradient reduction and
``apply_placement`` (moving experts with their Adam state). See :mod:`executor.placement`."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from moesched.errors import MoeschedError
from moesched.placement import Placement

from executor.placement import ADAM_STATE, PlacedMoE, _names, check_placements


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
        its replicas (experts in ascending order on every rank; one all-reduce each)."""
        mod = self.model
        dense = [p for p in mod.dense_params()]
        flat = torch.cat([_grad(p).reshape(-1) for p in dense])
        dist.all_reduce(flat)
        _scatter(flat, [p.grad for p in dense])
        for l, plc in enumerate(mod.placements):
            for e, reps in enumerate(plc.replicas):
                if len(reps) < 2:
                    continue
                g = self.group(reps)
                if mod.rank in reps:
                    ps = mod.expert(l, e)
                    buf = torch.cat([_grad(p).reshape(-1) for p in ps])
                    dist.all_reduce(buf, group=g)
                    _scatter(buf, [p.grad for p in ps])

    def apply_placement(self, new: Sequence[Placement], optimizer: torch.optim.Optimizer | None = None) -> int:
        """Move to placements ``new`` (one per layer): every added replica gets parameters and
        Adam state from the lowest current holder; removed replicas are freed; ``optimizer``
        (Adam or AdamW, or None) follows. Every rank must call it with the same ``new``.
        Returns the number of replicas copied. One-line MoeschedError (on every rank, before
        any communication) for a placement that breaks a limit."""
        mod = self.model
        check_placements(new, mod.cfg, mod.world)
        if optimizer is not None and not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            raise MoeschedError(f"apply_placement moves Adam/AdamW state; got {type(optimizer).__name__}")
        copied = 0
        for l, (old, nw) in enumerate(zip(mod.placements, new)):
            copied += self._move_layer(l, old, nw, optimizer)
        mod.placements = list(new)
        return copied

    def _move_layer(self, l: int, old: Placement, new: Placement, opt: torch.optim.Optimizer | None) -> int:
        mod, me = self.model, self.model.rank
        moves = old.moves(new)
        n = _expert_numel(mod)
        width = n * (1 + len(ADAM_STATE)) + 2  # params, moments, step, "has state"
        group = _expert_group(opt, mod)
        # point to point, in the one global order of the moves: each rank takes part only in
        # its own, and the earliest move not done always has both ends at it (no deadlock)
        for e, src, dst in moves:
            if me == src:
                dist.send(_pack(mod.expert(l, e), opt, n, width), dst)
            elif me == dst:
                row = torch.empty(width, dtype=torch.float64 if mod.dtype == torch.float64 else torch.float32,
                                  device=mod.device)
                dist.recv(row, src)
                self._install(l, e, row, opt, group, n)
        for e in range(old.experts):
            if me in old.replicas[e] and me not in new.replicas[e]:
                self._free(l, e, opt)
        return len(moves)

    def _install(self, l: int, e: int, row: torch.Tensor, opt: torch.optim.Optimizer | None,
                 group: dict | None, n: int) -> None:
        mod = self.model
        shapes = _shapes(mod)
        params = []
        for name, (o, shape) in zip(_names(mod.cfg), shapes):
            p = nn.Parameter(row[o:o + shape.numel()].view(shape).to(mod.dtype).clone())
            mod.experts[l][f"{e}_{name}"] = p
            params.append(p)
        if opt is None or group is None:
            return
        group["params"].extend(params)
        if row[-1].item() == 0:  # the source had no optimizer state yet
            return
        for p, (o, shape) in zip(params, shapes):
            st = {k: row[n * (s + 1) + o: n * (s + 1) + o + shape.numel()].view(shape).to(p.dtype).clone()
                  for s, k in enumerate(ADAM_STATE)}
            st["step"] = row[-2].clone().to(torch.float32)
            opt.state[p] = st

    def _free(self, l: int, e: int, opt: torch.optim.Optimizer | None) -> None:
        mod = self.model
        for name, p in zip(_names(mod.cfg), mod.expert(l, e)):
            if opt is not None:
                opt.state.pop(p, None)
                for g in opt.param_groups:
                    g["params"] = [q for q in g["params"] if q is not p]
            del mod.experts[l][f"{e}_{name}"]


def _grad(p: nn.Parameter) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


def _scatter(flat: torch.Tensor, grads: list[torch.Tensor | None]) -> None:
    o = 0
    for g in grads:
        if g is not None:
            g.copy_(flat[o:o + g.numel()].view_as(g))
            o += g.numel()


def _shapes(mod: PlacedMoE) -> list[tuple[int, torch.Size]]:
    """(offset, shape) of each expert parameter in a packed row."""
    M, H = mod.cfg.d_model, mod.cfg.ffn_hidden
    out, o = [], 0
    for name in _names(mod.cfg):
        shape = torch.Size((M, H) if name == "w2" else (H, M))
        out.append((o, shape))
        o += shape.numel()
    return out


def _expert_numel(mod: PlacedMoE) -> int:
    return len(_names(mod.cfg)) * mod.cfg.d_model * mod.cfg.ffn_hidden


def _pack(params: list[nn.Parameter], opt: torch.optim.Optimizer | None, n: int, width: int) -> torch.Tensor:
    """[params | exp_avg | exp_avg_sq | step | has_state] of one expert."""
    row = torch.zeros(width, dtype=torch.float64 if params[0].dtype == torch.float64 else torch.float32)
    row[:n] = torch.cat([p.detach().reshape(-1) for p in params]).to(row.dtype)
    states = [opt.state.get(p) for p in params] if opt is not None else []
    if states and all(states):
        for s, k in enumerate(ADAM_STATE):
            row[n * (s + 1):n * (s + 2)] = torch.cat([st[k].reshape(-1) for st in states]).to(row.dtype)
        row[-2] = float(states[0]["step"])
        row[-1] = 1.0
    return row.to(params[0].device)


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
