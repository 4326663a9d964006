"""Figures shared by ``moesched plot`` and the notebooks.

Every ``*_figure`` function returns a matplotlib ``Figure`` (Agg backend, imported lazily)
and writes nothing; :func:`save_png` writes one atomically. Times are shown in ms.
Sweep CSVs are those of ``moesched sweep`` (:mod:`moesched.solve.sweep`); :func:`sweep_frame`
reads one and adds the speedup columns the sweep figures use.
"""
from __future__ import annotations

import io
import math
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pandas as pd

from moesched.errors import MoeschedError
from moesched.fileio import write_atomic
from moesched.schedules import POLICIES
from moesched.sim import Timeline
from moesched.trace import KIND_COLOURS, RESOURCE_TID, exposed_intervals_us

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HIGHLIGHT = "#d62728"
POLICY_COLOURS = dict(zip(POLICIES, ("#7f7f7f", "#9467bd", "#1f77b4", "#8c564b", "#2ca02c", "#17becf", "#ff7f0e")))
PLAIN = "#8c9fb7"
EXPOSED = "#e31a1c"
SWEEP_REQUIRED = ("name", "M", "H", "moesched_us", "vanilla_us")


def _plt() -> Any:
    """pyplot, switched to Agg unless pyplot is already in use (e.g. inline in a notebook)."""
    import sys
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_png(fig: "Figure", path: str | os.PathLike, dpi: int = 110) -> None:
    """Write ``fig`` as a PNG at ``path`` atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    write_atomic(path, buf.getvalue())


# ---- policies ------------------------------------------------------------------------
def policy_bar_figure(step_us: Mapping[str, float | None], title: str, highlight: str = "moesched",
                      baseline: str = "vanilla") -> "Figure":
    """Bar chart of predicted step time (ms) per policy; ``highlight`` in red, each bar
    labelled with its time and its speedup over ``baseline``. None = cannot schedule."""
    plt = _plt()
    names = list(step_us)
    ms = [None if step_us[n] is None else step_us[n] / 1e3 for n in names]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    heights = [0.0 if v is None else v for v in ms]
    colours = [HIGHLIGHT if n == highlight else PLAIN for n in names]
    bars = ax.bar(names, heights, color=colours, edgecolor="black", linewidth=0.5)
    base = step_us.get(baseline)
    top = max(heights) if heights else 1.0
    for b, n, v in zip(bars, names, ms):
        text = "n/a" if v is None else f"{v:.2f}" + (f"\n{base / step_us[n]:.2f}x" if base else "")
        ax.text(b.get_x() + b.get_width() / 2, (v or 0.0) + 0.01 * top, text, ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("predicted step_ms (host model)")
    ax.set_xlabel("schedule policy")
    ax.set_ylim(0, top * 1.4 if top > 0 else 1.0)
    ax.set_title(title)
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color=HIGHLIGHT, label=f"{highlight} (solver)"),
                       Patch(color=PLAIN, label="published policy")], loc="upper left", fontsize=8, ncol=2,
              title=f"bar labels: step_ms, speedup_vs_{baseline} ({baseline} step / step)", title_fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


# ---- timelines -----------------------------------------------------------------------
def _gantt(ax: Any, tl: Timeline, rank: int, kinds: dict[str, str]) -> None:
    """Rows: one per resource with tasks, then exposed communication; y labels set."""
    d = tl.df[tl.df["rank"] == rank]
    rows = [r for r in RESOURCE_TID if r == "compute" or (d["resource"] == r).any()]
    labels = []
    for y, res in enumerate(reversed(rows), start=1):
        part = d[d["resource"] == res]
        for k, g in part.groupby("kind", sort=False):
            col = KIND_COLOURS.get(str(k), "#999999")
            kinds.setdefault(str(k), col)
            spans = list(zip(g["start_us"] / 1e3, (g["end_us"] - g["start_us"]) / 1e3))
            ax.broken_barh(spans, (y - 0.4, 0.8), facecolors=col, edgecolor="white", linewidth=0.2)
        labels.append((y, res))
    iv = exposed_intervals_us(tl, rank)
    ax.broken_barh([(s / 1e3, (e - s) / 1e3) for s, e in iv], (-0.25, 0.5), facecolors=EXPOSED, alpha=0.85)
    labels.append((0, "exposed comm"))
    ax.set_yticks([y for y, _ in labels], [n for _, n in labels])
    ax.set_ylim(-0.6, len(rows) + 0.6)
    ax.grid(axis="x", alpha=0.3)


def timeline_figure(timelines: Mapping[str, Timeline], title: str, rank: int = 0,
                    share_x: bool = True) -> "Figure":
    """Gantt charts of ``rank``, one panel per timeline (e.g. predicted and measured):
    a row per resource, bars coloured by task kind, exposed communication in red."""
    if not timelines:
        raise MoeschedError("no timelines to plot")
    for lab, tl in timelines.items():
        if not (tl.df["rank"] == rank).any():
            raise MoeschedError(f"timeline {lab!r} has no tasks on rank {rank}")
    plt = _plt()
    from matplotlib.patches import Patch
    n = len(timelines)
    fig, axes = plt.subplots(n, 1, figsize=(14, 0.9 + 1.7 * n), sharex=share_x, squeeze=False, layout="constrained")
    kinds: dict[str, str] = {}
    for ax, (lab, tl) in zip(axes[:, 0], timelines.items()):
        _gantt(ax, tl, rank, kinds)
        exp = tl.exposed_comm_us(rank)
        ax.set_title(f"{lab}: step {tl.makespan_us / 1e3:.2f} ms, exposed comm {exp / 1e3:.2f} ms", fontsize=10,
                     loc="left")
        if not share_x:
            ax.set_xlabel("time since step start (ms)")
    axes[-1, 0].set_xlabel("time since step start (ms)")
    order = list(KIND_COLOURS)
    seen = sorted(kinds, key=lambda k: order.index(k) if k in order else len(order))
    handles = [Patch(facecolor=kinds[k], label=k) for k in seen]
    handles.append(Patch(facecolor=EXPOSED, label="exposed comm\n(compute idle)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False,
               ncol=1 if len(handles) <= 4 * n + 2 else 2)
    fig.suptitle(f"{title} (rank {rank})", fontsize=12)
    return fig


def compute_durations(tl: Timeline, rank: int = 0) -> pd.Series:
    """Total compute time per task kind on ``rank`` (ms)."""
    d = tl.df[(tl.df["rank"] == rank) & (tl.df["resource"] == "compute")]
    return ((d["end_us"] - d["start_us"]).groupby(d["kind"]).sum() / 1e3).rename("ms")


def interference_figure(timelines: Mapping[str, Timeline], title: str, rank: int = 0) -> "Figure":
    """Grouped bars: compute time per task kind and the makespan, one bar per timeline
    (e.g. simulated without and with the profile's compute slowdown)."""
    plt = _plt()
    import numpy as np
    per = {lab: compute_durations(tl, rank) for lab, tl in timelines.items()}
    kinds = sorted(set().union(*(s.index for s in per.values())))
    cats = kinds + ["step (makespan)"]
    x = np.arange(len(cats))
    w = 0.8 / max(len(per), 1)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for i, (lab, s) in enumerate(per.items()):
        vals = [float(s.get(k, 0.0)) for k in kinds] + [timelines[lab].makespan_us / 1e3]
        ax.bar(x + (i - (len(per) - 1) / 2) * w, vals, w, label=lab, edgecolor="black", linewidth=0.4)
    ax.set_xticks(x, cats, rotation=20)
    ax.set_ylabel("time on rank %d (ms)" % rank)
    ax.set_xlabel("compute task kind (summed over tasks)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


# ---- sweeps --------------------------------------------------------------------------
def sweep_frame(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """A sweep CSV (or frame) with added columns: ``best_published`` (policy), ``best_published_us``,
    ``speedup_vanilla`` and ``speedup_best`` (policy step / moesched step: > 1 means
    moesched is faster; the sweep's steps are the host model's, :mod:`moesched.solve.sweep`)."""
    if isinstance(source, pd.DataFrame):
        df = source.copy()
    else:
        try:
            df = pd.read_csv(source)
        except FileNotFoundError:
            raise MoeschedError(f"sweep CSV not found: {source}") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, IsADirectoryError) as e:
            raise MoeschedError(f"sweep CSV {source} cannot be read: {e}") from None
    missing = [c for c in SWEEP_REQUIRED if c not in df.columns]
    if missing:
        raise MoeschedError(f"sweep CSV lacks columns {missing}; write it with `moesched sweep --out`")
    if df.empty:
        raise MoeschedError("sweep CSV has no rows")
    pols = [p for p in POLICIES if f"{p}_us" in df.columns]
    try:
        times = df[[f"{p}_us" for p in pols]].apply(pd.to_numeric, errors="raise")
        ours = pd.to_numeric(df["moesched_us"], errors="raise")
    except (ValueError, TypeError) as e:
        raise MoeschedError(f"sweep CSV has non-numeric step times: {e}") from None
    times.columns = pols
    if any(c.dtype.kind not in "iuf" for c in (ours, *(times[p] for p in pols))):
        raise MoeschedError("sweep CSV has step times that are not numbers (e.g. True)")
    if not _positive(ours) or not all(_positive(times[p].dropna()) for p in pols):
        raise MoeschedError("sweep CSV has step times that are not positive finite µs")
    if not times["vanilla"].notna().all():
        raise MoeschedError("sweep CSV needs a vanilla_us step time in every row (the speedups are over it)")
    if times.isna().all(axis=1).any():
        raise MoeschedError("sweep CSV has a row where no published policy has a step time")
    df["best_published"] = times.idxmin(axis=1)
    df["best_published_us"] = times.min(axis=1)
    df["speedup_vanilla"] = times["vanilla"] / ours
    df["speedup_best"] = df["best_published_us"] / ours
    for col in ("r_fwd", "r_bwd"):  # "1/2" = degrees used by several layers: keep the largest
        if col in df.columns:
            try:
                df[f"{col}_max"] = df[col].map(lambda v: max(int(x) for x in str(v).split("/")) if pd.notna(v) else None)
            except ValueError:
                raise MoeschedError(f"sweep CSV column {col} must hold degrees like 2 or 1/2") from None
    return df


def _positive(x: pd.Series) -> bool:
    """Every value positive and finite (NaN is not)."""
    return bool(((x > 0) & (x < math.inf)).all())


def speedup_figure(df: pd.DataFrame, title: str) -> "Figure":
    """Histogram (left) and CDF (right) of moesched's speedup over vanilla and over the best
    published policy of each layer."""
    plt = _plt()
    import numpy as np
    fig, (h, c) = plt.subplots(1, 2, figsize=(11, 4))
    series = {"over vanilla": df["speedup_vanilla"], "over best published": df["speedup_best"]}
    lo = min(float(s.min()) for s in series.values())
    hi = max(float(s.max()) for s in series.values())
    bins = np.linspace(min(lo, 1.0), max(hi, lo + 1e-3), 40)
    for (lab, s), col in zip(series.items(), ("#1f77b4", HIGHLIGHT)):
        h.hist(s, bins=bins, alpha=0.6, label=f"{lab} (median {s.median():.3f}x)", color=col)
        xs = np.sort(s.to_numpy())
        c.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=lab, color=col)
    for ax in (h, c):
        ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlabel("policy step / moesched step (> 1: moesched faster)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    h.set_ylabel("layers")
    c.set_ylabel("fraction of layers with speedup <= x")
    h.set_title("distribution")
    c.set_title("CDF")
    fig.suptitle(f"{title} ({len(df)} layers)")
    fig.tight_layout()
    return fig


def wins_figure(df: pd.DataFrame, title: str, by: str = "M") -> "Figure":
    """Stacked bars: for each value of shape column ``by``, how many layers each published
    policy is the best published one on (ties go to the policy first in POLICIES)."""
    plt = _plt()
    counts = pd.crosstab(df[by], df["best_published"])
    counts = counts[[p for p in POLICIES if p in counts.columns]]
    fig, ax = plt.subplots(figsize=(8, 4))
    counts.plot.bar(stacked=True, ax=ax, color=[POLICY_COLOURS[p] for p in counts.columns], edgecolor="black",
                    linewidth=0.4)
    ax.set_xlabel(by)
    ax.set_ylabel("layers (ties: first policy listed)")
    ax.set_title(title)
    ax.legend(title="best published policy", fontsize=8, bbox_to_anchor=(1.0, 1.0), loc="upper left")
    ax.tick_params(axis="x", rotation=0)
    fig.tight_layout()
    return fig


def knob_heatmap_figure(df: pd.DataFrame, knobs: Sequence[str], title: str, x: str = "M", y: str = "H",
                        agg: str = "median") -> "Figure":
    """One heatmap panel per knob column: ``agg`` of the knob over the (x, y) shape grid.
    Columns whose name contains "bytes" are shown in MiB on a log2 colour scale."""
    plt = _plt()
    import numpy as np
    fig, axes = plt.subplots(1, len(knobs), figsize=(5.2 * len(knobs), 4.4), squeeze=False)
    for ax, knob in zip(axes[0], knobs):
        in_bytes = "bytes" in knob
        vals = pd.to_numeric(df[knob], errors="coerce")
        vals = np.log2(vals / 2**20) if in_bytes else vals
        table = vals.groupby([df[y], df[x]]).agg(agg).unstack(x).sort_index(ascending=False)
        present = df.groupby([df[y], df[x]]).size().unstack(x).reindex_like(table).notna().to_numpy()
        arr = table.to_numpy(dtype=float)
        im = ax.imshow(arr, cmap="viridis", aspect="auto")
        ax.set_xticks(range(table.shape[1]), [str(v) for v in table.columns])
        ax.set_yticks(range(table.shape[0]), [str(v) for v in table.index])
        mid = np.nanmean(arr) if np.isfinite(arr).any() else 0.0
        for i in range(arr.shape[0]):
            for j in range(arr.shape[1]):
                v = arr[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{2 ** v:.3g}" if in_bytes else f"{v:.3g}", ha="center", va="center",
                            fontsize=8, color="white" if v < mid else "black")
                elif in_bytes and present[i, j]:
                    ax.text(j, i, "one\nbucket", ha="center", va="center", fontsize=7, color="grey")
        ax.set_xlabel({"M": "M (d_model)", "H": "H (expert hidden)"}.get(x, x))
        ax.set_ylabel({"M": "M (d_model)", "H": "H (expert hidden)"}.get(y, y))
        label = f"{agg} {knob.removesuffix('_max')}" + (" (MiB, log2 colour)" if in_bytes else "")
        fig.colorbar(im, ax=ax, label=label)
        ax.set_title(label, fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
