"""How skewed a routing trace is: per layer, the max/mean expert load over steps, and how
often the most loaded expert changes (drift); a figure of max/mean load over steps."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moesched.routing_trace import RoutingTrace

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class LayerSkew:
    """Skew of one layer over a trace's steps. Imbalance = max expert load / mean expert
    load in a step (1.0 = even; E at most).

    Attributes:
        layer: the layer.
        mean, p90, worst: mean, 90th percentile and maximum imbalance over steps.
        first, last: the imbalance of the first and last step (mean over the first and last
            tenth of the steps, at least one step each).
        top_changes: fraction of step-to-step transitions in which the most loaded expert changed.
        rank_mean: mean over steps of max/mean copies received per EP rank (the trace's EP
            size, expert e on rank e // (E/S)).
    """

    layer: int
    mean: float
    p90: float
    worst: float
    first: float
    last: float
    top_changes: float
    rank_mean: float


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def layer_skew(trace: RoutingTrace) -> list[LayerSkew]:
    """One :class:`LayerSkew` per layer."""
    by_step = trace.imbalance_by_step()                 # [step][layer]
    n = len(by_step)
    tenth = max(1, n // 10)
    tops: list[list[int]] = [[] for _ in range(trace.header.layers)]
    for s in trace.steps:
        for r in trace.step(s):
            load = r.expert_load()
            tops[r.layer].append(load.index(max(load)))
    out = []
    for l in range(trace.header.layers):
        xs = [row[l] for row in by_step]
        srt = sorted(xs)
        changes = sum(a != b for a, b in zip(tops[l], tops[l][1:]))
        ranks = [r.rank_imbalance() for r in trace.records if r.layer == l]
        out.append(LayerSkew(l, _mean(xs), srt[min(n - 1, int(0.9 * n))], max(xs), _mean(xs[:tenth]),
                             _mean(xs[-tenth:]), changes / max(1, n - 1), _mean(ranks)))
    return out


def skew_figure(trace: RoutingTrace, title: str) -> "Figure":
    """max/mean expert load per layer (one line each) over the steps."""
    from moesched.figures import _plt
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    by_step = trace.imbalance_by_step()
    for l in range(trace.header.layers):
        ax.plot(trace.steps, [row[l] for row in by_step], lw=1, label=f"layer {l}")
    ax.axhline(1.0, color="#7f7f7f", lw=0.8, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("max / mean expert load")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=4)
    return fig


def save_skew_png(trace: RoutingTrace, path: str | os.PathLike, title: str) -> None:
    from moesched.figures import save_png
    save_png(skew_figure(trace, title), path)
