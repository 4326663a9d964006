"""The solver's family of priority rules (lower priority runs first).

A rule is a picklable callable ``rule(g) -> {task: priority}`` (a
:class:`moesched.schedules.base.Priority`: ``rule.vector(c)`` ranks the tasks of a
compiled graph without a DiGraph) with three independent choices:

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

from moesched.schedules.base import Priority
from moesched.schedules.priorities import ranks
from moesched.sim import Compiled

FIRST_A2A = {"fwd": "dispatch", "bwd": "combine_bwd"}


@dataclass(frozen=True)
class Rule(Priority):
    """See the module docstring."""

    a2a_fwd: str = "seq"
    a2a_bwd: str = "seq"
    dw: str = "inline"
    grad: int | None = None

    def vector(self, c: Compiled) -> list[float]:
        """Priorities aligned with ``c.names``: the rank of each task's sort key (ties, which
        a graph's unique ``seq`` rules out, by index)."""
        L = int(c.graph_attrs["model"].layers)
        first_f, first_b, dw, grad = self.a2a_fwd == "first", self.a2a_bwd == "first", self.dw, self.grad
        keys: list[tuple] = []
        add = keys.append
        for seq, phase, kind, layer, layers in zip(c.seq, c.phase, c.kind, c.layer, c.layers):
            if phase == "fwd":
                if kind == "loss":
                    add((0, L, 0, 0, seq))
                else:
                    add((0, layer, 0 if first_f and kind == "dispatch" else 1, 0, seq))
            elif phase == "bwd":
                pos = L - 1 - layer
                if kind == "expert_dw" and dw == "end":
                    add((1, L, 0, 0, seq))
                elif kind == "expert_dw" and dw == "layer":
                    add((1, pos, 2, 0, seq))
                else:
                    add((1, pos, 0 if first_b and kind == "combine_bwd" else 1, 0, seq))
            elif grad is None:  # gradient chunk
                add((2, 0, 0, 0, seq))
            else:
                target = min(layers) - grad
                # target < 0: after all backward compute and all-to-alls of layer 0
                add((1, L, 1, 0, seq) if target < 0 else (1, L - 1 - target, 3, 0, seq))
        return ranks(keys)

    def label(self) -> str:
        grad = "a2a-first" if self.grad is None else ("ready" if self.grad == 0 else f"lag{self.grad}")
        return f"a2a={self.a2a_fwd}/{self.a2a_bwd} dw={self.dw} grad={grad}"

    def to_dict(self) -> dict:
        return {"a2a_fwd": self.a2a_fwd, "a2a_bwd": self.a2a_bwd, "dw": self.dw, "grad": self.grad}
