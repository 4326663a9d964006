"""DEP timelines (:mod:`moesched.findep`): the attention group and the expert group side by
side, one panel per policy, exposed transfers highlighted (notebooks/06_inference.ipynb)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from moesched.errors import MoeschedError
from moesched.figures import EXPOSED, _plt
from moesched.findep import Schedule
from moesched.trace import KIND_COLOURS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Rows of a panel, top to bottom: (label, resource of Schedule.intervals, colour).
ROWS = (("attention group", "ag", None), ("A2E link", "a2e", KIND_COLOURS["dispatch"]),
        ("expert group", "eg", KIND_COLOURS["expert_fwd"]), ("E2A link", "e2a", KIND_COLOURS["combine"]))
AG_COLOURS = {"a": KIND_COLOURS["attn_fwd"], "s": KIND_COLOURS["shared_fwd"]}


def _spans(iv: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(s, e - s) for s, e in iv]


def _panel(ax: Any, sched: Schedule) -> None:
    """One policy: a row per resource (ms), then the exposed transfers in red."""
    n = len(ROWS)
    for i, (_label, res, colour) in enumerate(ROWS):
        y = n - i
        if res == "ag":
            for kind, col in AG_COLOURS.items():
                iv = [v for v, k in zip(sched.intervals["ag"], sched.ag_kinds) if k == kind]
                ax.broken_barh(_spans(iv), (y - 0.4, 0.8), facecolors=col, edgecolor="white", linewidth=0.2)
        else:
            ax.broken_barh(_spans(sched.intervals[res]), (y - 0.4, 0.8), facecolors=colour, edgecolor="white",
                           linewidth=0.2)
    ax.broken_barh(_spans(sched.exposed_intervals()), (-0.3, 0.6), facecolors=EXPOSED, alpha=0.9)
    ax.set_yticks(list(range(n, -1, -1)), [r[0] for r in ROWS] + ["exposed transfers"])
    ax.set_ylim(-0.6, n + 0.6)
    ax.grid(axis="x", alpha=0.3)


def dep_timeline_figure(schedules: Mapping[str, Schedule], title: str, share_x: bool = True) -> "Figure":
    """One panel per labelled schedule (e.g. FinDEP and PPPipe): the attention group's
    attention and shared-expert tasks, the A2E link, the expert group and the E2A link on one
    time axis (ms), and below them in red the time a transfer runs while both groups idle."""
    if not schedules:
        raise MoeschedError("no DEP schedules to plot")
    plt = _plt()
    from matplotlib.patches import Patch
    n = len(schedules)
    fig, axes = plt.subplots(n, 1, figsize=(14, 1.0 + 2.0 * n), sharex=share_x, squeeze=False, layout="constrained")
    for ax, (label, sched) in zip(axes[:, 0], schedules.items()):
        _panel(ax, sched)
        ax.set_title(f"{label}: forward {sched.makespan_ms:.2f} ms, exposed transfers {sched.exposed_comm_ms():.2f} ms",
                     fontsize=10, loc="left")
    axes[-1, 0].set_xlabel("time since the forward pass started (ms)")
    handles = [Patch(facecolor=AG_COLOURS["a"], label="attention"),
               Patch(facecolor=AG_COLOURS["s"], label="shared expert"),
               Patch(facecolor=ROWS[1][2], label="A2E transfer"), Patch(facecolor=ROWS[2][2], label="experts"),
               Patch(facecolor=ROWS[3][2], label="E2A transfer"),
               Patch(facecolor=EXPOSED, label="exposed transfer\n(both groups idle)")]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=12)
    return fig
