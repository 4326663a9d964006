"""moesched.noisefloor and benchmarks/noise_floor.py: the least error any deterministic model
can have on a plan measured more than once, and identical plans found in a committed run."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import noise_floor  # noqa: E402
from moesched.errors import MoeschedError  # noqa: E402
from moesched.noisefloor import floor_max_pct, floor_mean_pct  # noqa: E402


def test_floor_max_is_attained_at_the_harmonic_point() -> None:
    a, b = 15.0, 21.0
    p = 2 * a * b / (a + b)
    assert floor_max_pct([a, b]) == pytest.approx(100 * abs(p - a) / a)
    assert floor_max_pct([a, b]) == pytest.approx(100 * abs(p - b) / b)
    assert floor_max_pct([a, 18.0, b]) == pytest.approx(100 * 6 / 36)
    assert floor_max_pct([20.0, 20.0]) == 0.0


def test_floor_mean_beats_every_other_prediction() -> None:
    ms = [14.97, 20.98, 20.29, 14.76]
    best = floor_mean_pct(ms)
    for i in range(1001):
        p = 14.0 + 8.0 * i / 1000
        assert 100 * sum(abs(p - a) / a for a in ms) / len(ms) >= best - 1e-9
    assert floor_mean_pct([7.0]) == 0.0
    with pytest.raises(MoeschedError):
        floor_mean_pct([])


def test_tutel_and_schemoe_are_one_plan_on_one_gpu() -> None:
    """The committed held-out run: Tutel and ScheMoE ran the same plan on every shape, and
    gpt-top1's two runs of it bound any model's max error from below (16.7 %)."""
    t = noise_floor.plan_table(ROOT / "results/h200x1/heldout", [])
    by = t.set_index(["config", "schedule"])["key"]
    for c in t["config"].unique():
        assert by[(c, "tutel")] == by[(c, "schemoe")]
        assert by[(c, "tutel")] != by[(c, "pipemoe")]
    mx, mean = noise_floor.floors(t, ["m0"])
    assert mx == pytest.approx(100 * (20.9773 - 14.968) / (20.9773 + 14.968), abs=0.01)
    assert 0 < mean < mx


def test_validate_prints_the_floor_of_schedules_that_ran_one_plan(capsys: pytest.CaptureFixture) -> None:
    """validate's summary: rows whose plans run the same steps (runs_hash) bound any model's
    error from below; a plan measured once adds nothing; the hash ignores the policy name."""
    import dataclasses
    import json

    from moesched.plan import Plan
    from moesched.validation_summary import summarize
    ran = json.loads((ROOT / "results/h200x1/passes2/heldout-rep/plans-one-gpu.json").read_text())
    plans = [Plan.from_dict(p) for p in ran[:4]]  # fine-e64-top8: vanilla, tutel, pipemoe, schemoe
    assert plans[1].policy != plans[3].policy and plans[1].runs_hash == plans[3].runs_hash  # tutel = schemoe
    assert plans[1].hash != plans[3].hash and plans[0].runs_hash != plans[1].runs_hash
    assert dataclasses.replace(plans[1], predicted={}).runs_hash == plans[1].runs_hash
    rows = [{"regime": "r", "config": "c", "schedule": p.policy, "issue": "single", "runs_hash": p.runs_hash[:12],
             "predicted_ms": 1.0 + i, "measured_ms": m, "error_pct": 1.0}
            for i, (p, m) in enumerate(zip(plans, [10.0, 15.0, 30.0, 21.0]))]
    summarize(rows)
    out = capsys.readouterr().out
    assert "floor of any model on these measurements (1 plans run by several schedules): max 16.67 %" in out, out
    summarize([dict(r, runs_hash=str(i)) for i, r in enumerate(rows)])
    assert "floor of any model" not in capsys.readouterr().out


def test_validate_prints_each_repeat_in_run_order(capsys: pytest.CaptureFixture) -> None:
    """validate's summary shows a host that changed speed during the run: per repeat, the
    mean |error| against that repeat's medians and the median host probe before it
    (results/h200x1/passes5: the probe went from 23-25 µs to 32-38 µs after two repeats)."""
    import pandas as pd

    from moesched.validation_summary import summarize
    rows = pd.read_csv(ROOT / "results/h200x1/passes5/heldout-rep/validation-one-gpu.csv").to_dict("records")
    first = [float(r["repeat_ms"].split(";")[0]) for r in rows]
    want = sum(abs(r["predicted_ms"] - m) / m for r, m in zip(rows, first)) / len(rows) * 100
    summarize(rows)
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "each repeat in run order" in ln)
    assert line.count(" %") == 5 and f"mean {want:.2f} %," in line, line
    assert "; host probe 25.1, 23.4, 37.6, 33.7, 32.0 µs" in line and "CPU stolen" not in line
    summarize([dict(r, repeats=1) for r in rows])
    assert "each repeat" not in capsys.readouterr().out


def test_repeat_drift_reports_each_repeat_and_refuses_a_csv_without_them(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """benchmarks/repeat_drift.py: per repeat, the probe and the error against that repeat;
    a run without per-repeat columns is one line and exit 2."""
    import shutil

    import repeat_drift
    assert repeat_drift.main([str(ROOT / "results/h200x1/passes5/heldout-rep")]) == 0
    out = capsys.readouterr().out
    assert "repeat 3: probe 37.6 µs, |error| mean 14.33 %" in out and "median r 0.80 over 48 plans" in out, out
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(ROOT / "results/h200x1/passes/heldout-rep/validation-one-gpu.csv", old)
    assert repeat_drift.main([str(old)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moesched: error: ") and err.count("\n") == 1 and "repeat_ms" in err
