"""Pipeline-parallel stages: which layers a stage holds and the order it runs its
micro-batches in (GPipe and 1F1B), torch-free.

A schedule is, per stage, the list of its work items ("F", i) / ("B", i): forward or
backward of micro-batch i. GPipe (Huang et al. 2019): every forward, then every backward.
1F1B (PipeDream-Flush, Narayanan et al. 2021, §2.2): stage s runs S - 1 - s warm-up
forwards, then alternates one forward and one backward, then drains the backwards; it
keeps at most S - s micro-batches' activations. Both leave the bubble fraction
(S - 1) / (m + S - 1) of a step idle on uniform stages (S stages, m micro-batches;
Narayanan et al. 2021 Eq. 1 as a share of the step).
"""
from __future__ import annotations

from moesched.errors import MoeschedError

Work = tuple[str, int]


def stage_layers(layers: int, stages: int) -> list[range]:
    """The contiguous layer range of every stage; the stages must divide the layers."""
    if stages < 1 or layers % stages:
        raise MoeschedError(f"{stages} pipeline stages do not divide {layers} layers")
    per = layers // stages
    return [range(s * per, (s + 1) * per) for s in range(stages)]


def gpipe(stages: int, microbatches: int) -> list[list[Work]]:
    """Every forward, then every backward (in reverse), on each stage."""
    _check(stages, microbatches)
    return [[("F", i) for i in range(microbatches)] + [("B", i) for i in reversed(range(microbatches))]
            for _ in range(stages)]


def one_f_one_b(stages: int, microbatches: int) -> list[list[Work]]:
    """1F1B with a flush: S - 1 - s warm-up forwards, one forward one backward, drain."""
    _check(stages, microbatches)
    out = []
    for s in range(stages):
        warm = min(stages - 1 - s, microbatches)
        items: list[Work] = [("F", i) for i in range(warm)]
        f, b = warm, 0
        while b < microbatches:
            if f < microbatches:
                items.append(("F", f))
                f += 1
            items.append(("B", b))
            b += 1
        out.append(items)
    return out


def bubble_fraction(stages: int, microbatches: int) -> float:
    """Idle share of a step on uniform stages: (S - 1) / (m + S - 1)."""
    _check(stages, microbatches)
    return (stages - 1) / (microbatches + stages - 1)


def _check(stages: int, microbatches: int) -> None:
    if stages < 1 or microbatches < 1:
        raise MoeschedError(f"a pipeline needs >= 1 stage and >= 1 micro-batch, got {stages} and {microbatches}")
