"""The figure of ``moesched placement --png``: step time and balance ratio over the steps."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from moesched.figures import HIGHLIGHT, _plt
from moesched.placement_replay import ReplayResult

#: Colours of the other policies (tab10 without its red, which marks moesched).
OTHER_COLOURS = ("#7f7f7f", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b", "#17becf")

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def replay_figure(res: Mapping[str, ReplayResult], title: str) -> "Figure":
    """Two panels over the steps, one line per policy (moesched in red): step time (ms) and
    the mean balance ratio (max/mean rank load) over layers; a dot where a policy migrated."""
    plt = _plt()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    others = iter(OTHER_COLOURS)
    for name, r in res.items():
        kw = ({"color": HIGHLIGHT, "lw": 2.0, "zorder": 3} if name == "moesched"
              else {"color": next(others), "lw": 1.0})
        steps = range(len(r.step_us))
        line, = top.plot(steps, [us / 1e3 for us in r.step_us], label=name, **kw)
        bottom.plot(steps, r.balance, color=line.get_color(), lw=kw["lw"])
        if r.migration_steps:
            bottom.plot(r.migration_steps, [r.balance[t] for t in r.migration_steps], "o", ms=3,
                        color=line.get_color())
    top.set_ylabel("step time (ms)")
    bottom.set_ylabel("balance ratio (max/mean)")
    bottom.set_xlabel("step (dots: migrations)")
    top.legend(fontsize=8, ncol=3)
    top.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
