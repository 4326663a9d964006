"""Pipeline-parallel stages: which layers a stage holds and the order it runs its
micro-batches in (GPipe and 1F1B), torch-free.

A schedule is, per stage, the list of its work items ("F", i) / ("B", i): forward or
backward of micro-batch i. GPipe (Huang et al. 2019): every forward, then every backward.
1F1B (PipeDream-Flush, Narayanan et al. 2021, §2.2): stage s runs S - 1 - s warm-up
forwards, then alternates one forward and one backward, then drains the backwards; it
keeps at most S - s micro-batches' activations. Both leave the bubble fraction
(S - 1) / (m + S - 1) of a step idle on uniform stages (S stages, m micro-batches;
Narayanan et al. 2021 Eq. 1 as a share of the step). :func:`pipeline_graph` builds one
step as a graph of the simulator's rank groups (a role per stage), so the bubble appears
in the simulated timeline.
"""
from __future__ import annotations

from typing import Sequence

import networkx as nx

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


def pipeline_graph(stages: int, microbatches: int, fwd_us: Sequence[float], bwd_us: Sequence[float],
                   p2p_us: float, schedule: str = "1f1b") -> tuple[nx.DiGraph, dict[str, float]]:
    """The role graph of one pipelined step (roles ``stage0`` ...) and its priorities: per
    stage s and micro-batch i a forward ``F{s}.{i}`` (fwd_us[s] µs) and backward ``B{s}.{i}``
    (bwd_us[s]) on the stage's compute, an activation send ``A{s}.{i}`` after each forward
    and a gradient send ``G{s}.{i}`` after each backward on the link between the two stages
    (one per direction, p2p_us each; :mod:`moesched.simranks` joining tasks). Priorities put
    every stage's compute in ``schedule``'s order (``"1f1b"`` or ``"gpipe"``)."""
    from moesched.simranks import add_task, new_graph
    orders = (one_f_one_b if schedule == "1f1b" else gpipe)(stages, microbatches)
    if len(fwd_us) != stages or len(bwd_us) != stages:
        raise MoeschedError(f"need a forward and a backward time per stage ({stages})")
    roles = tuple(f"stage{s}" for s in range(stages))
    g = new_graph(roles)
    for i in range(microbatches):
        for s in range(stages):
            deps = [f"A{s - 1}.{i}"] if s else []
            add_task(g, f"F{s}.{i}", kind="stage_fwd", role=roles[s], duration_us=fwd_us[s], deps=deps, chunk=i)
            if s < stages - 1:
                add_task(g, f"A{s}.{i}", kind="p2p", roles=roles[s:s + 2], resource=f"link@pp{s}.fwd",
                         duration_us=p2p_us, deps=[f"F{s}.{i}"], chunk=i, op="send_recv")
    for i in range(microbatches):
        for s in reversed(range(stages)):
            deps = [f"F{s}.{i}"] + ([f"G{s + 1}.{i}"] if s < stages - 1 else [])
            add_task(g, f"B{s}.{i}", kind="stage_bwd", role=roles[s], duration_us=bwd_us[s], deps=deps,
                     phase="bwd", chunk=i)
            if s > 0:
                add_task(g, f"G{s}.{i}", kind="p2p", roles=roles[s - 1:s + 1], resource=f"link@pp{s - 1}.bwd",
                         duration_us=p2p_us, deps=[f"B{s}.{i}"], phase="bwd", chunk=i, op="send_recv")
    prio: dict[str, float] = {}
    for s, items in enumerate(orders):
        for pos, (k, i) in enumerate(items):
            prio[f"{k}{s}.{i}"] = pos
            link = f"A{s}.{i}" if k == "F" else f"G{s}.{i}"
            if link in g:
                prio[link] = pos + 0.5
    return g, prio
