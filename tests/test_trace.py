"""Chrome trace export and Gantt chart: valid, nested per track, and round-trippable."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.sim import COLUMNS, Timeline, simulate
from moesched.trace import (PID_STRIDE, THREAD_NAMES, exposed_intervals_us, gantt_png, read_chrome_trace,
                            write_chrome_trace)

TWO_NODES = Profile.load("analytic-h200x4-2nodes")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def timeline(serialize: bool = False, ranks: int = 1) -> Timeline:
    m = MoEModel(name="t", layers=2, d_model=64, heads=4, seq_len=8, micro_batch=2, ffn_hidden=128, experts=4,
                 top_k=2, shared_experts=1)
    g = build(m, Cluster(2, 2), TWO_NODES, Knobs.uniform(2, 2, a2a="hierarchical", grad_chunk_bytes=20_000,
                                                          serialize=serialize))
    if ranks > 1:
        g.graph["ranks"] = ranks
        for _, a in g.nodes(data=True):
            a["duration_by_rank_us"] = [a["duration_us"] * (1 + 0.1 * k) for k in range(ranks)]
    return simulate(g)


def sorted_df(df: pd.DataFrame) -> pd.DataFrame:
    return df[COLUMNS].sort_values(["rank", "task"]).reset_index(drop=True)


def test_trace_events_nest_and_have_metadata(tmp_path: Path) -> None:
    tl = timeline(ranks=2)
    path = tmp_path / "trace.json"
    write_chrome_trace(tl, path, label="predicted")
    d = json.loads(path.read_text())
    assert set(d) == {"traceEvents", "displayTimeUnit", "otherData"} and d["displayTimeUnit"] == "ms"
    ev = d["traceEvents"]
    xs = [e for e in ev if e["ph"] == "X"]
    assert len(xs) == len(tl.df)
    assert {e["tid"] for e in xs} == {0, 1, 2} and {e["pid"] for e in xs} == {0, 1}
    for e in xs:
        assert {"name", "cat", "ts", "dur", "pid", "tid", "args"} <= set(e) and e["dur"] >= 0
        assert {"layer", "chunk", "phase", "kind"} <= set(e["args"]) and e["cat"] == e["args"]["kind"]
    tracks: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in xs:
        tracks.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for key, iv in tracks.items():  # no overlap within a (pid, tid): Perfetto nests them
        iv.sort()
        assert all(b[0] >= a[1] - 1e-6 for a, b in zip(iv, iv[1:])), key
    meta = [e for e in ev if e["ph"] == "M"]
    procs = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert procs == {0: "rank 0 (predicted)", 1: "rank 1 (predicted)"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert threads[0, 0] == "compute" and threads[1, 1].startswith("comm_intra") and threads[0, 2] == THREAD_NAMES[2]
    sort = {(e["pid"], e["tid"]): e["args"]["sort_index"] for e in meta if e["name"] == "thread_sort_index"}
    assert sort[0, 0] == 0 and sort[0, 1] == 1 and sort[0, 2] == 2
    assert d["otherData"]["makespan_us"]["predicted"] == tl.makespan_us


def test_round_trip(tmp_path: Path) -> None:
    tl = timeline(ranks=2)
    write_chrome_trace(tl, tmp_path / "t.json")
    back = read_chrome_trace(tmp_path / "t.json")
    pd.testing.assert_frame_equal(sorted_df(back.df), sorted_df(tl.df), check_dtype=False)
    assert back.makespan_us == tl.makespan_us
    assert back.exposed_comm_us() == pytest.approx(tl.exposed_comm_us())
    assert back.meta["label"] == "sim" and back.meta["ranks"] == 2


def test_side_by_side_timelines(tmp_path: Path) -> None:
    """A measured timeline (same columns, arbitrary times) shares a file with the prediction."""
    pred = timeline()
    measured = Timeline(pred.df.assign(start_us=pred.df["start_us"] * 1.1, end_us=pred.df["end_us"] * 1.1),
                        {"source": "executor"})
    write_chrome_trace(pred, tmp_path / "both.json", label="predicted", extra_timelines={"measured": measured})
    d = json.loads((tmp_path / "both.json").read_text())
    pids = {e["pid"] for e in d["traceEvents"] if e["ph"] == "X"}
    assert pids == {0, PID_STRIDE}
    p2 = read_chrome_trace(tmp_path / "both.json")
    m2 = read_chrome_trace(tmp_path / "both.json", label="measured")
    pd.testing.assert_frame_equal(sorted_df(p2.df), sorted_df(pred.df), check_dtype=False)
    pd.testing.assert_frame_equal(sorted_df(m2.df), sorted_df(measured.df), check_dtype=False)
    assert m2.meta["source"] == "executor"
    with pytest.raises(MoeschedError, match="no timeline"):
        read_chrome_trace(tmp_path / "both.json", label="other")
    with pytest.raises(MoeschedError, match="distinct"):
        write_chrome_trace(pred, tmp_path / "x.json", label="a", extra_timelines={"a": pred})


def test_bad_trace_files(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(MoeschedError, match="not valid JSON"):
        read_chrome_trace(tmp_path / "bad.json")
    (tmp_path / "arr.json").write_text("[]")
    with pytest.raises(MoeschedError, match="traceEvents"):
        read_chrome_trace(tmp_path / "arr.json")
    ev = {"ph": "X", "name": "a", "pid": 0, "tid": 0, "ts": 0, "dur": 1}
    for name, doc, words in (
            ("args", {"traceEvents": [dict(ev, args=[1])]}, "malformed event"),
            ("tid", {"traceEvents": [dict(ev, tid="x")]}, "malformed event"),
            ("negative", {"traceEvents": [dict(ev, dur=-1)]}, "spans"),
            ("events", {"traceEvents": [1]}, "malformed event"),
            ("other", {"traceEvents": [ev], "otherData": [1]}, "otherData"),
            ("timelines", {"traceEvents": [ev], "otherData": {"timelines": 5}}, "otherData"),
            ("meta", {"traceEvents": [ev], "otherData": {"meta": {"sim": 3}}}, "malformed event")):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
        with pytest.raises(MoeschedError, match=words):
            read_chrome_trace(tmp_path / f"{name}.json")


def test_exposed_intervals_match_exposed_time() -> None:
    for tl in (timeline(), timeline(serialize=True)):
        iv = exposed_intervals_us(tl)
        assert sum(e - s for s, e in iv) == pytest.approx(tl.exposed_comm_us())
        assert all(e > s for s, e in iv) and all(b[0] >= a[1] for a, b in zip(iv, iv[1:]))


def test_gantt_png(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "gantt.png"
    gantt_png({"predicted": timeline(), "serial": timeline(serialize=True)}, path, "test chart")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5_000
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
