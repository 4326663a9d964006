"""Pipeline stages (moesched.pipeline) and their execution (executor.pipecheck): 1F1B and
GPipe orders, and a 2-stage pipeline on gloo giving the reference's loss and gradients."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from localhost import free_port

from tests.test_executor_exact import torchrun as run_module


from moesched.errors import MoeschedError
from moesched.pipeline import bubble_fraction, gpipe, one_f_one_b, stage_layers

@pytest.mark.parametrize("S,m", [(2, 4), (4, 4), (4, 8), (3, 1)])
def test_schedules_run_every_micro_batch_once_forward_before_backward(S: int, m: int) -> None:
    for sched in (one_f_one_b(S, m), gpipe(S, m)):
        assert len(sched) == S
        for items in sched:
            assert sorted(items) == sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
            assert all(items.index(("F", i)) < items.index(("B", i)) for i in range(m))
    for s, items in enumerate(one_f_one_b(S, m)):  # 1F1B keeps at most S - s activations alive
        live = peak = 0
        for k, _ in items:
            live += 1 if k == "F" else -1
            peak = max(peak, live)
        assert peak == min(S - s, m)
    assert [k for k, _ in gpipe(S, m)[0]] == ["F"] * m + ["B"] * m


def test_bubble_and_stage_layers() -> None:
    assert bubble_fraction(2, 4) == pytest.approx(1 / 5) and bubble_fraction(4, 12) == pytest.approx(3 / 15)
    assert stage_layers(8, 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    with pytest.raises(MoeschedError, match="do not divide 6 layers"):
        stage_layers(6, 4)
    with pytest.raises(MoeschedError, match=">= 1 micro-batch"):
        one_f_one_b(2, 0)


def torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    return run_module(nproc, "executor.pipecheck", args, free_port())


@pytest.mark.parametrize("nproc,args", [(2, ["--microbatches", "4"]), (2, ["--schedule", "gpipe"]),
                                        (4, ["--microbatches", "4"])])
def test_pipeline_step_equals_the_reference(tmp_path: Path, nproc: int, args: list[str]) -> None:
    out = tmp_path / "pipe.jsonl"
    p = torchrun(nproc, [*args, "--out", str(out)])
    assert p.returncode == 0, p.stderr[-3000:]
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["ok"] and rec["stages"] == nproc and rec["max_abs_err"] < 1e-5
    assert abs(rec["loss"] - rec["ref_loss"]) <= 1e-5 * abs(rec["ref_loss"])
    if "gpipe" not in args and nproc == 2:  # micro-batch 1's forward runs before micro-batch 0's backward ends
        assert rec["order"] == ["F0", "F1", "B0", "F2", "B1", "F3", "B2", "B3"]


def test_one_rank_is_refused() -> None:
    p = torchrun(1, [])
    assert p.returncode != 0 and "at least 2 ranks" in p.stderr


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
@pytest.mark.parametrize("S,m", [(2, 4), (4, 4), (4, 8), (3, 6)])
def test_simulated_bubble_matches_the_analytic_fraction(schedule: str, S: int, m: int) -> None:
    """Uniform stages, free links: the role simulation of one step takes (m + S - 1)(f + b)
    and idles (S - 1)/(m + S - 1) of it; every stage runs its compute in the schedule's order;
    a link time shifts the step and no resource is double-booked."""
    from moesched.pipeline import pipeline_graph
    from moesched.sim import simulate
    g, prio = pipeline_graph(S, m, [10.0] * S, [20.0] * S, 0.0, schedule)
    tl = simulate(g, prio, strict=True)
    assert tl.makespan_us == pytest.approx((m + S - 1) * 30.0)
    assert 1 - m * 30.0 / tl.makespan_us == pytest.approx(bubble_fraction(S, m))
    df = tl.df
    order = (one_f_one_b if schedule == "1f1b" else gpipe)(S, m)
    for s in range(S):
        mine = df[(df["role"] == f"stage{s}") & (df["kind"] != "p2p")].sort_values("start_us")
        assert list(mine["task"]) == [f"{k}{s}.{i}" for k, i in order[s]]
    g2, prio2 = pipeline_graph(S, m, [10.0] * S, [20.0] * S, 5.0, schedule)
    tl2 = simulate(g2, prio2, strict=True)
    assert tl2.makespan_us > tl.makespan_us
    for (role, res), grp in tl2.df.groupby(["role", "resource"]):
        iv = sorted(zip(grp["start_us"], grp["end_us"]))
        assert all(a[1] <= b[0] + 1e-9 for a, b in zip(iv, iv[1:])), (role, res)
