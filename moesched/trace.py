"""Timelines out: Chrome trace JSON (Perfetto, chrome://tracing) and a Gantt PNG.

Trace conventions (Kineto-like, so predicted and measured traces line up): one complete
event (``ph: "X"``) per timeline row, ``pid`` = rank, ``tid`` = serial resource
(0 compute, 1 comm_intra, 2 comm_inter), ``ts``/``dur`` in µs; a measured timeline's host
issue intervals (``Timeline.host``) go to tids 10 (compute issue) and 11 (comm issue). Several timelines can share
one file (``extra_timelines``); the k-th one's pids are offset by ``k * PID_STRIDE``.
Works for any :class:`~moesched.sim.Timeline`, simulated or measured (same columns).
"""
from __future__ import annotations

import io
import math
import os
from typing import Mapping

import pandas as pd

from moesched import __version__
from moesched.errors import MoeschedError
from moesched.fileio import read_json, write_atomic, write_json
from moesched.sim import COLUMNS, HOST_COLUMNS, Timeline, uncovered_intervals, union_intervals

RESOURCE_TID = {"compute": 0, "comm_intra": 1, "comm_inter": 2}
TID_RESOURCE = {v: k for k, v in RESOURCE_TID.items()}
THREAD_NAMES = {0: "compute", 1: "comm_intra (NVLink/intra-node link)", 2: "comm_inter (inter-node link)"}
#: Host issue threads of measured timelines (Timeline.host): their own trace rows.
HOST_TID = {"main": 10, "compute": 10, "comm": 11}
HOST_THREAD_NAMES = {10: "host: compute issue", 11: "host: comm issue"}
PID_STRIDE = 1000
KIND_COLOURS = {
    "attn_fwd": "#4c72b0", "attn_bwd": "#8172b2", "expert_fwd": "#55a868", "expert_dx": "#2e7d32",
    "expert_dw": "#9ccc65", "shared_fwd": "#64b5f6", "shared_bwd": "#1565c0", "loss": "#000000",
    "dispatch": "#dd8452", "combine": "#c44e52", "dispatch_bwd": "#f0a070", "combine_bwd": "#e57373",
    "grad_ar": "#937860",
}


def _events(tl: Timeline, label: str, pid_offset: int) -> list[dict]:
    """Metadata plus one complete event per row of ``tl.df``."""
    df = tl.df
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise MoeschedError(f"timeline {label!r} lacks columns {missing}")
    unknown = sorted(set(df["resource"]) - set(RESOURCE_TID))
    if unknown:
        raise MoeschedError(f"timeline {label!r} has unknown resources {unknown}")
    ev: list[dict] = []
    for rank in sorted(int(r) for r in df["rank"].unique()):
        pid = pid_offset + rank
        ev.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": f"rank {rank} ({label})"}})
        ev.append({"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": pid}})
        for t, tname in THREAD_NAMES.items():
            ev.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": t, "args": {"name": tname}})
            ev.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": t, "args": {"sort_index": t}})
    cols = [df[c].tolist() for c in COLUMNS]
    for task, kind, layer, chunk, phase, rank, resource, s, e in zip(*cols):
        ev.append({"name": str(task), "cat": str(kind), "ph": "X", "ts": float(s), "dur": float(e) - float(s),
                   "pid": pid_offset + int(rank), "tid": RESOURCE_TID[resource],
                   "args": {"layer": int(layer), "chunk": int(chunk), "phase": str(phase), "kind": str(kind),
                            "end_us": float(e)}})
    if tl.host is not None and len(tl.host):
        h = tl.host
        for rank in sorted(int(r) for r in h["rank"].unique()):
            for t, tname in HOST_THREAD_NAMES.items():
                ev.append({"name": "thread_name", "ph": "M", "pid": pid_offset + rank, "tid": t, "args": {"name": tname}})
                ev.append({"name": "thread_sort_index", "ph": "M", "pid": pid_offset + rank, "tid": t,
                           "args": {"sort_index": t}})
        for task, rank, thread, s, e, w in zip(*[h[c].tolist() for c in HOST_COLUMNS]):
            ev.append({"name": str(task), "cat": "host", "ph": "X", "ts": float(s), "dur": float(e) - float(s),
                       "pid": pid_offset + int(rank), "tid": HOST_TID[str(thread)],
                       "args": {"thread": str(thread), "end_us": float(e), "wait_us": float(w)}})
    return ev


def write_chrome_trace(timeline: Timeline, path: str | os.PathLike, label: str = "sim",
                       extra_timelines: Mapping[str, Timeline] | None = None) -> None:
    """Write ``timeline`` (and optionally ``extra_timelines``, label -> Timeline) as one
    Chrome trace JSON file, atomically. Times stay in µs (the format's unit)."""
    labels = [label] + list(extra_timelines or {})
    if len(set(labels)) != len(labels):
        raise MoeschedError(f"trace labels must be distinct, got {labels}")
    tls = [timeline] + list((extra_timelines or {}).values())
    events: list[dict] = []
    offsets: dict[str, int] = {}
    for k, (lab, tl) in enumerate(zip(labels, tls)):
        offsets[lab] = k * PID_STRIDE
        events += _events(tl, lab, k * PID_STRIDE)
    other = {"generator": f"moesched {__version__}", "timelines": offsets,
             "meta": {lab: _jsonable(tl.meta) for lab, tl in zip(labels, tls)},
             "makespan_us": {lab: tl.makespan_us for lab, tl in zip(labels, tls)}}
    write_json(path, {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other})


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in (d or {}).items():
        out[str(k)] = v if isinstance(v, (str, int, float, bool, type(None), list)) else str(v)
    return out


def read_chrome_trace(path: str | os.PathLike, label: str | None = None) -> Timeline:
    """Read a trace written by :func:`write_chrome_trace` back into a Timeline (the first
    timeline of the file, or the one called ``label``)."""
    d = read_json(path, "trace")
    if not isinstance(d, dict) or not isinstance(d.get("traceEvents"), list):
        raise MoeschedError(f"trace {path}: expected an object with a traceEvents list")
    other = d.get("otherData") or {}
    offsets = (other.get("timelines") or {"sim": 0}) if isinstance(other, dict) else None
    if not isinstance(offsets, dict) or not isinstance(other.get("meta") or {}, dict):
        raise MoeschedError(f"trace {path}: otherData must be an object whose timelines and meta are objects")
    if label is None:
        label = next(iter(offsets))
    if label not in offsets:
        raise MoeschedError(f"trace {path} has no timeline {label!r} (it has {sorted(offsets)})")
    try:
        return _timeline(d["traceEvents"], int(offsets[label]), label, dict((other.get("meta") or {}).get(label, {})))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise MoeschedError(f"trace {path}: a malformed event ({type(e).__name__}: {str(e)[:60]})") from None


def _timeline(events: list, lo: int, label: str, meta: dict) -> Timeline:
    """The Timeline of the events whose pid lies in [lo, lo + PID_STRIDE)."""
    rows, host = [], []
    for e in events:
        if e.get("ph") != "X" or not lo <= int(e["pid"]) < lo + PID_STRIDE:
            continue
        a = e.get("args") or {}
        start = float(e["ts"])
        end = float(a["end_us"]) if "end_us" in a else start + float(e["dur"])
        if not (math.isfinite(start) and math.isfinite(end) and end >= start):
            raise ValueError(f"event {str(e.get('name'))[:30]!r} spans {start:g}..{end:g} µs")
        if int(e["tid"]) in HOST_THREAD_NAMES:
            host.append((e["name"], int(e["pid"]) - lo, a.get("thread", "main"), start, end,
                         float(a.get("wait_us", 0.0))))
            continue
        rows.append((e["name"], a.get("kind", e.get("cat", "")), int(a.get("layer", -1)), int(a.get("chunk", 0)),
                     a.get("phase", ""), int(e["pid"]) - lo, TID_RESOURCE.get(int(e["tid"]), "compute"), start, end))
    meta["label"] = label
    return Timeline(pd.DataFrame.from_records(rows, columns=COLUMNS), meta,
                    host=pd.DataFrame.from_records(host, columns=HOST_COLUMNS) if host else None)


def exposed_intervals_us(tl: Timeline, rank: int = 0) -> list[tuple[float, float]]:
    """Intervals (µs) on ``rank`` where some collective runs while compute is idle."""
    d = tl.df[tl.df["rank"] == rank]
    comm = union_intervals(d.loc[d["resource"] != "compute", ["start_us", "end_us"]].to_numpy().tolist())
    comp = union_intervals(d.loc[d["resource"] == "compute", ["start_us", "end_us"]].to_numpy().tolist())
    return uncovered_intervals(comm, comp)


def gantt_png(timelines: Mapping[str, Timeline], path: str | os.PathLike, title: str, rank: int = 0) -> None:
    """Draw a Gantt chart of ``rank``: one row per resource per timeline label, bars
    coloured by task kind, exposed communication as a red hatched band; x axis in ms.
    Written atomically as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows: list[tuple[str, str, pd.DataFrame | None, list[tuple[float, float]]]] = []
    for lab, tl in timelines.items():
        d = tl.df[tl.df["rank"] == rank]
        for res in RESOURCE_TID:
            part = d[d["resource"] == res]
            if len(part) or res == "compute":
                rows.append((f"{lab} {res}", "bars", part, []))
        rows.append((f"{lab} exposed comm", "exposed", None, exposed_intervals_us(tl, rank)))
    heights = [0.8 if kind == "bars" else 0.35 for _, kind, _, _ in rows]
    fig, ax = plt.subplots(figsize=(14, 1.0 + 0.55 * len(rows)))
    y, ticks, kinds_seen = 0.0, [], {}
    for (name, kind, part, iv), h in zip(reversed(rows), reversed(heights)):
        if kind == "bars":
            for k, g in part.groupby("kind", sort=False):
                col = KIND_COLOURS.get(str(k), "#999999")
                kinds_seen.setdefault(str(k), col)
                spans = list(zip(g["start_us"] / 1e3, (g["end_us"] - g["start_us"]) / 1e3))
                ax.broken_barh(spans, (y, h), facecolors=col, edgecolor="white", linewidth=0.2)
        else:
            ax.broken_barh([(s / 1e3, (e - s) / 1e3) for s, e in iv], (y, h), facecolors="none",
                           edgecolor="red", hatch="////", linewidth=0.6)
        ticks.append((y + h / 2, name))
        y += h + 0.3
    ax.set_yticks([t for t, _ in ticks], [n for _, n in ticks])
    ax.set_xlabel("time (ms)")
    ax.set_title(title)
    ax.set_ylim(-0.3, y)
    order = list(KIND_COLOURS)
    seen = sorted(kinds_seen, key=lambda k: order.index(k) if k in order else len(order))
    handles = [Patch(facecolor=kinds_seen[k], label=k) for k in seen]
    handles.append(Patch(facecolor="none", edgecolor="red", hatch="////", label="exposed comm"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
