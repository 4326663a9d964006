"""Moving expert state between placements, whole experts and hidden-dimension shards alike
(:meth:`executor.placement_step.PlacedStep.apply_placement`).

Every rank d of ``new.replicas[e]`` whose slice ``new.shard_range(e, d, H)`` differs from
what it held under ``old`` (nothing, or another slice) assembles the new slice from pieces
(:func:`move_plan`, the same list on every rank):

* when d's old slice covers the new one: cut locally (whole -> shard, shard -> narrower);
* from an unsplit old expert: all of the new slice from its lowest holder (one send/recv,
  :meth:`moesched.placement.Placement.transfers`' rule);
* from a split old expert: from every old shard rank the rows of the hidden dimension its
  shard and the new slice share (a local copy where that rank is d).

A piece carries, per weight (w1, (w3), w2; sliced along the hidden dimension: rows of
w1/w3 [H, M], columns of w2 [M, H]), the parameter and its Adam moments ``exp_avg``,
``exp_avg_sq`` (the parameter's shape, sliced alike), then ``step`` and a has-state flag.
All pieces are taken from the old state before any rank installs a new slice; then slices
no longer held leave the module and the optimizer, and new ones join them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn as nn

from moesched.placement import Placement

from executor.placement import ADAM_STATE, _names, hidden_dim, hidden_slice

if TYPE_CHECKING:
    from executor.placement import PlacedMoE

#: (source rank, lo, hi): rows [lo, hi) of the expert's hidden dimension from ``source``.
Piece = tuple[int, int, int]


def _range(p: Placement, e: int, r: int, hidden: int) -> tuple[int, int] | None:
    return p.shard_range(e, r, hidden) if r in p.replicas[e] else None


def move_plan(old: Placement, new: Placement, hidden: int) -> list[tuple[int, int, list[Piece]]]:
    """(expert, destination, pieces) of every slice ``new`` gives a rank that did not hold
    exactly it under ``old``, in one global order (experts ascending, destinations as
    ``new.replicas[e]``, pieces by ascending lo); the pieces tile the new slice."""
    out = []
    for e, ranks in enumerate(new.replicas):
        for d in ranks:
            lo, hi = new.shard_range(e, d, hidden)
            had = _range(old, e, d, hidden)
            if had == (lo, hi):
                continue
            if had is not None and had[0] <= lo and hi <= had[1]:
                pieces = [(d, lo, hi)]
            elif not old.split[e]:
                pieces = [(old.replicas[e][0], lo, hi)]
            else:
                pieces = []
                for s in old.replicas[e]:
                    a, b = old.shard_range(e, s, hidden)
                    if max(a, lo) < min(b, hi):
                        pieces.append((s, max(a, lo), min(b, hi)))
                pieces.sort(key=lambda q: q[1])
            out.append((e, d, pieces))
    return out


def _row_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pack(params: list[nn.Parameter], names: tuple[str, ...], opt: torch.optim.Optimizer | None,
          a: int, b: int) -> torch.Tensor:
    """Flat row of hidden rows [a, b) (the holder's own coordinates) of one expert:
    per weight [param | exp_avg | exp_avg_sq], then [step, has_state]."""
    dt = _row_dtype(params[0].dtype)
    states = [opt.state.get(p) for p in params] if opt is not None else []
    has = bool(states) and all(states)
    parts = []
    for name, p, st in zip(names, params, states if has else [None] * len(params)):
        w = hidden_slice(name, p.detach(), a, b)
        parts.append(w)
        parts += [hidden_slice(name, st[k], a, b) if st is not None else torch.zeros_like(w) for k in ADAM_STATE]
    tail = torch.tensor([float(states[0]["step"]) if has else 0.0, 1.0 if has else 0.0], dtype=dt,
                        device=params[0].device)
    return torch.cat([q.reshape(-1).to(dt) for q in parts] + [tail])


def _unpack(row: torch.Tensor, names: tuple[str, ...], M: int, rows: int
            ) -> tuple[list[list[torch.Tensor]], float | None]:
    """Inverse of :func:`_pack` for ``rows`` hidden rows: per weight [param, exp_avg,
    exp_avg_sq] (shapes [rows, M], or [M, rows] for w2), and the step (None: no state)."""
    out, o = [], 0
    for name in names:
        shape = (M, rows) if name == "w2" else (rows, M)
        ts = []
        for _ in range(1 + len(ADAM_STATE)):
            ts.append(row[o:o + M * rows].view(shape))
            o += M * rows
        out.append(ts)
    return out, (float(row[-2]) if row[-1].item() != 0 else None)


def _width(names: tuple[str, ...], M: int, rows: int) -> int:
    return len(names) * (1 + len(ADAM_STATE)) * M * rows + 2


def move_layer(mod: "PlacedMoE", l: int, old: Placement, new: Placement, opt: torch.optim.Optimizer | None,
               group: dict | None) -> int:
    """Move layer ``l`` of ``mod`` (this rank) from ``old`` to ``new``; returns the pieces sent
    between ranks. Point to point in :func:`move_plan`'s global order: each rank takes part
    only in its own, and the earliest not done always has both ends at it (no deadlock)."""
    me, names, M, H = mod.rank, _names(mod.cfg), mod.cfg.d_model, mod.cfg.ffn_hidden
    got: dict[int, list[tuple[list[list[torch.Tensor]], float | None]]] = {}
    sent = 0
    for e, d, pieces in move_plan(old, new, H):
        for s, lo, hi in pieces:
            sent += int(s != d)
            if me not in (s, d):
                continue
            if me == s:
                a = old.shard_range(e, s, H)[0]
                row = _pack(mod.expert(l, e), names, opt, lo - a, hi - a)
                if s != d:
                    dist.send(row, d)
            else:
                row = torch.empty(_width(names, M, hi - lo), dtype=_row_dtype(mod.dtype), device=mod.device)
                dist.recv(row, s)
            if me == d:
                got.setdefault(e, []).append(_unpack(row, names, M, hi - lo))
    for e in range(old.experts):
        if me in old.replicas[e] and _range(old, e, me, H) != _range(new, e, me, H):
            free(mod, l, e, opt)
    for e, parts in got.items():
        _install(mod, l, e, parts, opt, group)
    return sent


def _install(mod: "PlacedMoE", l: int, e: int, parts: list[tuple[list[list[torch.Tensor]], float | None]],
             opt: torch.optim.Optimizer | None, group: dict | None) -> None:
    """Join the pieces (ascending lo) of expert e's new slice along the hidden dimension and
    make them this rank's parameters of e, with their Adam state."""
    steps = [st for _, st in parts]
    for i, name in enumerate(_names(mod.cfg)):
        dim = hidden_dim(name)
        joined = [torch.cat([ts[i][j] for ts, _ in parts], dim) for j in range(1 + len(ADAM_STATE))]
        p = nn.Parameter(joined[0].to(mod.dtype).clone())
        mod.experts[l][f"{e}_{name}"] = p
        if opt is None or group is None:
            continue
        group["params"].append(p)
        if all(st is not None for st in steps):
            st = {k: joined[j + 1].to(p.dtype).clone() for j, k in enumerate(ADAM_STATE)}
            st["step"] = torch.tensor(float(steps[0]), dtype=torch.float32)
            opt.state[p] = st


def free(mod: "PlacedMoE", l: int, e: int, opt: torch.optim.Optimizer | None) -> None:
    """Drop this rank's parameters of expert e of layer l from the module and ``opt``."""
    for name, p in zip(_names(mod.cfg), mod.expert(l, e)):
        if opt is not None:
            opt.state.pop(p, None)
            for g in opt.param_groups:
                g["params"] = [q for q in g["params"] if q is not p]
        del mod.experts[l][f"{e}_{name}"]
