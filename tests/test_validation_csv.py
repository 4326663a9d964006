"""moesched.validation_csv: validate's CSV keeps the rows it had, is rewritten atomically as
each plan is measured, and a row's errors follow its repeats."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from moesched.errors import MoeschedError
from moesched.validation_csv import FIELDS, CsvTable, RepeatHost, measured_columns, remeasured


def _row(**kw: object) -> dict:
    return {**{k: "" for k in FIELDS}, "regime": "r", "config": "c", "schedule": "s", "issue": "single", **kw}


def test_table_keeps_earlier_rows_and_rewrites_its_own(tmp_path: Path) -> None:
    out = tmp_path / "v.csv"
    CsvTable(str(out)).put((0, "single"), _row(schedule="earlier", predicted_ms=1.0))
    t = CsvTable(str(out))                       # a second run appends to the first's file
    t.put((0, "single"), _row(schedule="a", predicted_ms=2.0))
    t.put((1, "single"), _row(schedule="b", predicted_ms=3.0))
    t.put((0, "single"), _row(schedule="a", predicted_ms=4.0))  # the same plan after another repeat
    rows = list(csv.DictReader(out.open(newline="")))
    assert [(r["schedule"], r["predicted_ms"]) for r in rows] == [("earlier", "1.0"), ("a", "4.0"), ("b", "3.0")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.csv"]  # no temporary file left
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(MoeschedError, match="other columns"):
        CsvTable(str(tmp_path / "other.csv"))


def test_remeasured_redoes_the_measured_columns_and_every_error() -> None:
    runs = [[10.0, 10.0, 10.0]]
    hosts = [RepeatHost(20.0, 0.0, 1.5)]
    row = _row(predicted_ms=11.0, predicted_routed_ms=9.0, predicted_uneven_ms="", predicted_exposed_ms=0.5,
               error_pct=10.0, error_routed_pct=-10.0, **measured_columns(runs, hosts))
    assert row["repeat_probe_us"] == "20.000" and row["repeat_others_pct"] == "1.5"
    runs.append([12.0, 12.0, 12.0, 12.0])    # a slower repeat: the median of all 7 steps is 12
    hosts.append(RepeatHost(30.0))
    new = remeasured(row, runs, hosts)
    assert new["measured_ms"] == 12.0 and new["repeats"] == 2
    assert new["error_pct"] == pytest.approx(100 * (11 - 12) / 12, abs=1e-3)
    assert new["error_routed_pct"] == pytest.approx(100 * (9 - 12) / 12, abs=1e-3)
    assert new["error_uneven_pct"] == "" and new["predicted_exposed_ms"] == 0.5  # no prediction, no error
    assert new["measured_spread_pct"] == pytest.approx(100 * 2 / 12, abs=1e-3)
    assert new["repeat_ms"] == "10.0000;12.0000" and new["repeat_steal_pct"] == "0;"
    assert row["repeats"] == 1  # the old row is left as it was


def test_validate_cut_short_keeps_every_plan_it_measured(tmp_path: Path) -> None:
    """A validate killed outright (SIGKILL to the whole torchrun, as a time limit or a lost
    machine would) leaves a complete CSV: a row per plan it measured, with the repeats it
    reached, each row's median and errors from those repeats."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from localhost import free_port
    root = Path(__file__).resolve().parent.parent
    m = dict(name="tiny", layers=1, d_model=32, heads=2, seq_len=16, micro_batch=2, ffn_hidden=64, experts=4,
             top_k=2, capacity_factor=None, shared_experts=0, expert_kind="swiglu", router="topk_softmax",
             dtype="fp32")
    cfg = tmp_path / "configs.json"
    cfg.write_text(json.dumps([{"name": "tiny", "model": m}]))
    out = tmp_path / "v.csv"
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "--master_addr=127.0.0.1", "-m", "moesched", "validate", "--profile", "profiles/cpu-gloo-2.json",
           "--configs", str(cfg), "--schedules", "vanilla,flowmoe", "--out", str(out), "--steps", "1",
           "--warmup", "0", "--workers", "1", "--repeats", "100000"]
    p = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    rows: list[dict] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None:
            time.sleep(0.5)
            if out.exists():
                rows = list(csv.DictReader(out.open(newline="")))
                if len(rows) == 2 and min(int(r["repeats"]) for r in rows) >= 3:
                    break
        assert p.poll() is None, p.stderr.read().decode()[-3000:] if p.stderr else ""
        os.killpg(p.pid, signal.SIGKILL)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["schedule"] for r in rows] == ["vanilla", "flowmoe"] and all(set(r) == set(FIELDS) for r in rows)
    for r in rows:
        meds = [float(x) for x in r["repeat_ms"].split(";")]
        assert int(r["repeats"]) == len(meds) >= 3 and min(meds) <= float(r["measured_ms"]) <= max(meds)
        assert float(r["error_pct"]) == pytest.approx(
            100 * (float(r["predicted_ms"]) - float(r["measured_ms"])) / float(r["measured_ms"]), abs=0.01)


def test_repeat_values_reads_a_per_repeat_cell() -> None:
    from moesched.validation_csv import repeat_values
    assert repeat_values("1.5;;2") == [1.5, None, 2.0]
    assert repeat_values(float("nan")) == [] and repeat_values("") == [] and repeat_values(None) == []
    assert repeat_values(3.25) == [3.25]  # one repeat, read by pandas as a number
