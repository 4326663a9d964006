"""``executor.run --placements``: the plan's model trains with experts placed and moved as a
placement schedule says, and a schedule or plan it cannot follow is refused on every rank
with one line and exit status 2 (gloo, 2 ranks started as torchrun starts them, via
RANK/WORLD_SIZE). Exactness of the moves is executor.placecheck's
(tests/test_placement_executor.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from localhost import free_port

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.knobs import Knobs
from moesched.placement import Placement
from moesched.placement_schedule import PlacementSchedule

from executor.run import check_args, parse_args
from executor.testplans import make_plan, tiny_model
from tests.test_executor_safety import assert_same_error

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def launch(args: list[str], world: int = 2) -> list[tuple[int, str, str]]:
    """``python -m executor.run ARGS`` as ranks 0..world-1 of one gloo job: (exit status,
    stdout, stderr) per rank."""
    port, procs = free_port(), []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, "-m", "executor.run", *args, "--backend", "gloo", "--timeout", "20"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return [(p.wait(timeout=90), *p.communicate()) for p in procs]


def static(experts: int = 4, ranks: int = 2) -> Placement:
    return Placement.static(experts, ranks, experts // ranks + 1)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Plans for 2 ranks (unchunked, chunked) and schedules (good; 4 ranks; 8 experts)."""
    tmp = tmp_path_factory.mktemp("placements")
    m, c = tiny_model(), Cluster(1, 2)
    out = {name: str(tmp / f"{name}.json") for name in ("plan", "chunked", "good", "ranks4", "experts8")}
    make_plan(m, c, Knobs.uniform(m.layers, 1)).save(out["plan"])
    make_plan(m, c, Knobs((2, 1), (1, 1))).save(out["chunked"])
    # step 2: expert 0 on both ranks, 1 and 2 swap ranks (3 copies per layer); step 4: layer 0
    # to expert 2 on both ranks and 1 on rank 0 (2 copies), layer 1 back to static (2 copies);
    # step 9 is past the last step of a 2 + 4 step run
    a = Placement.of([[0, 1], [1], [0], [1]], 2, 3)
    b = Placement.of([[1], [0], [0, 1], [1]], 2, 3)
    PlacementSchedule("test", ((0, (static(), static())), (2, (a, a)), (4, (b, static())),
                               (9, (static(), static())))).save(out["good"])
    PlacementSchedule("test", ((0, (static(4, 4),) * 2), (1, (static(4, 4),) * 2))).save(out["ranks4"])
    PlacementSchedule("test", ((0, (static(8),) * 2),)).save(out["experts8"])
    return out


def test_a_schedule_with_two_changes_in_the_run(files: dict[str, str]) -> None:
    res = launch(["--plan", files["plan"], "--placements", files["good"], "--steps", "4", "--warmup", "2"])
    assert [code for code, _, _ in res] == [0, 0], res
    out = res[0][1]
    assert re.search(r"executor: test tiny 1x2 placed \(test\): median step [\d.]+ ms, [\d,]+ tokens/s, "
                     r"loss [\d.]+ \(4 steps after 2 warm-up\)", out), out
    m = re.search(r"executor: 2 of 3 placement changes applied, 10 experts moved "
                  r"\(([\d.]+) ms before step 2, ([\d.]+) ms before step 4\); past the last step: step 9$",
                  out.strip().splitlines()[-1])
    assert m and all(float(ms) > 0 for ms in m.groups()), out
    assert res[1][1] == "", res[1][1]  # rank 0 alone reports


@pytest.mark.parametrize("schedule, needle", [
    ("ranks4", "placement schedule {path} is for 4 ranks, this job has 2"),
    ("experts8", "placement schedule {path} places 8 experts in 2 layers, the plan's model tiny has 4 experts"),
])
def test_a_schedule_for_another_job_is_refused_on_every_rank(files: dict[str, str], schedule: str,
                                                             needle: str) -> None:
    res = launch(["--plan", files["plan"], "--placements", files[schedule], "--steps", "1", "--warmup", "0"])
    assert all(out == "" for _, out, _ in res), res  # no step ran
    assert_same_error([(code, err) for code, _, err in res], needle.format(path=files[schedule]))


def test_a_chunked_plan_runs_unchunked_and_says_so(files: dict[str, str]) -> None:
    res = launch(["--plan", files["chunked"], "--placements", files["good"], "--steps", "1", "--warmup", "0"])
    assert [code for code, _, _ in res] == [0, 0], res
    lines = res[0][1].strip().splitlines()
    assert lines[0] == ("executor: note: the placed step is unchunked (pipeline degree 1, one gradient all-reduce, "
                        "flat all-to-all); not applied: the plan's pipeline degree 2 (r_fwd [2, 1], r_bwd [1, 1])")
    assert lines[-1] == "executor: 0 of 3 placement changes applied, 0 experts moved; past the last step: step 2, " \
                        "step 4, step 9", lines
    assert res[1][1] == "", res[1][1]


@pytest.mark.parametrize("flags, needle", [
    (["--trace", "t.json"], "has no --trace"),
    (["--record-routing", "r.json"], "has no --record-routing"),
    (["--issue", "threads"], "has no --issue threads"),
])
def test_flags_the_placed_step_cannot_honour_are_refused_first(files: dict[str, str], flags: list[str],
                                                               needle: str) -> None:
    a = parse_args(["--plan", files["plan"], "--placements", files["good"], *flags])
    with pytest.raises(MoeschedError, match=re.escape(needle)):
        check_args(a)
    check_args(parse_args(["--plan", files["plan"], "--placements", files["good"]]))  # alone: accepted


def _refusal(plan, schedule: str, world: int = 2) -> str:
    from executor.placerun import load_for
    with pytest.raises(MoeschedError) as e:
        load_for(plan, schedule, world)
    return str(e.value)


def test_what_the_placed_step_cannot_follow(files: dict[str, str]) -> None:
    """Checked on each rank before the agreement (no process group needed)."""
    from dataclasses import replace

    from moesched.layouts import Layout
    from moesched.plan import Plan

    from executor.placerun import load_for, unchunked_note
    good, plan = files["good"], Plan.load(files["plan"])
    assert load_for(plan, good, 2).changes[1][0] == 2
    m, c = tiny_model(), Cluster(1, 2)
    cases = [
        (make_plan(m, Cluster(1, 2, ep=1), Knobs.uniform(2, 1)), "the plan's expert-parallel group is 1 ranks"),
        (make_plan(tiny_model(dense_layers=(0,), dense_ffn_hidden=32), c, Knobs.uniform(2, 1)),
         "does not run dense layers [0] of tiny"),
        (make_plan(tiny_model(router="expert_choice"), c, Knobs.uniform(2, 1)), "the expert_choice router"),
        (make_plan(tiny_model(aux_loss_coef=0.01), c, Knobs.uniform(2, 1)), "auxiliary router losses"),
        (replace(plan, layout=Layout(2)), "layout plan; placements run expert-parallel plans only"),
    ]
    for p, needle in cases:
        assert needle in _refusal(p, good), needle
    # knobs the unchunked step leaves out are named; at degree 1 and one bucket, grad_sync,
    # at_chunked and serialize change nothing, so nothing is named
    assert "not applied: the plan's gradient chunks of 4096 bytes" in unchunked_note(
        make_plan(m, c, Knobs.uniform(2, 1, grad_chunk_bytes=4096)))
    assert "not applied: the plan's hierarchical all-to-all" in unchunked_note(
        make_plan(tiny_model(experts=8), Cluster(2, 2), Knobs.uniform(2, 1, a2a="hierarchical")))
    for k in (Knobs.uniform(2, 1, grad_sync="after_backward", serialize=True), Knobs.uniform(2, 1, at_chunked=True)):
        p = make_plan(m, c, k)
        assert load_for(p, good, 2).policy == "test" and unchunked_note(p) is None
    assert "placement schedule file not found" in _refusal(plan, good + ".missing")
