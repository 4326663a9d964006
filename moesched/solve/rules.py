"""The solver's family of priority rules (lower priority runs first).

A rule is a picklable callable ``rule(g) -> {task: priority}`` (a
:data:`moesched.schedules.base.PriorityFn`) with three independent choices:

* ``a2a_fwd`` / ``a2a_bwd``: "seq" keeps creation order on the link (dispatch c0,
  combine c0, dispatch c1, ...); "first" runs every first all-to-all of a layer
  (dispatch in forward, combine_bwd in backward) before any second one (ScheMoE's
  Theorem-1 order).
* ``dw``: where expert weight-gradient GEMMs rank in backward: "inline" (creation order,
  right after their dX), "layer" (after every other compute task of their layer, so dX
  and the next all-to-all are not held up), "end" (after all backward compute).
* ``grad``: where gradient all-reduce chunks rank: ``None`` = after every all-to-all
  (a link takes a ready all-to-all first: FlowMoE/Lina); an integer ``d`` >= 0 = a chunk
  whose last gradients come from layer l ranks just after the backward tasks of layer
  l - d, i.e. it may delay all-to-alls of layers below l - d (d = 0 is DDP's
  ready order; larger d places the chunk into a later layer's backward window).

The default rule (seq, seq, inline, None) equals :func:`moesched.schedules.base.seq_priority`.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

FIRST_A2A = {"fwd": "dispatch", "bwd": "combine_bwd"}


@dataclass(frozen=True)
class Rule:
    """See the module docstring."""

    a2a_fwd: str = "seq"
    a2a_bwd: str = "seq"
    dw: str = "inline"
    grad: int | None = None

    def __call__(self, g: nx.DiGraph) -> dict[str, float]:
        return dict(zip(g.nodes, self.vector(g)))

    def vector(self, g: nx.DiGraph) -> list[float]:
        """Priorities aligned with ``list(g.nodes)``: the rank of each task's sort key."""
        L = int(g.graph["model"].layers)
        keys = []
        for i, (t, a) in enumerate(g.nodes(data=True)):
            keys.append((self._key(a, L), i))
        order = sorted(range(len(keys)), key=keys.__getitem__)
        out = [0.0] * len(keys)
        for rank, i in enumerate(order):
            out[i] = float(rank)
        return out

    def _key(self, a: dict, L: int) -> tuple:
        seq = a["seq"]
        phase, kind = a["phase"], a["kind"]
        if phase == "fwd":
            if kind == "loss":
                return (0, L, 0, 0, seq)
            cls = 0 if (self.a2a_fwd == "first" and kind == "dispatch") else 1
            return (0, a["layer"], cls, 0, seq)
        if phase == "bwd":
            pos = L - 1 - a["layer"]
            if kind == "expert_dw":
                if self.dw == "end":
                    return (1, L, 0, 0, seq)
                if self.dw == "layer":
                    return (1, pos, 2, 0, seq)
            cls = 0 if (self.a2a_bwd == "first" and kind == "combine_bwd") else 1
            return (1, pos, cls, 0, seq)
        # gradient chunk
        if self.grad is None:
            return (2, 0, 0, 0, seq)
        target = min(a["layers"]) - self.grad
        if target < 0:
            return (1, L, 1, 0, seq)  # after all backward compute and all-to-alls of layer 0
        return (1, L - 1 - target, 3, 0, seq)

    def label(self) -> str:
        grad = "a2a-first" if self.grad is None else ("ready" if self.grad == 0 else f"lag{self.grad}")
        return f"a2a={self.a2a_fwd}/{self.a2a_bwd} dw={self.dw} grad={grad}"

    def to_dict(self) -> dict:
        return {"a2a_fwd": self.a2a_fwd, "a2a_bwd": self.a2a_bwd, "dw": self.dw, "grad": self.grad}
