"""Every bad command line of the torch-side entry points ends in ONE line
``moesched: error: ...`` on stderr and exit status 2, with no traceback and no file touched
(executor.run, executor.selfcheck, executor.launch; one process, a gloo world of 1)."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from localhost import free_port

from moesched.cluster import Cluster
from moesched.knobs import Knobs

from executor.launch import failure_line, root_cause
from executor.run import trace_path_problem
from executor.testplans import make_plan, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def run_module(module: str, args: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess:
    """``python -m module args`` as rank 0 of a world of 1 (its own rendezvous port)."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


def assert_one_line(r: subprocess.CompletedProcess, needle: str = "") -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("moesched: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stdout + r.stderr and r.stdout == "", r.stdout
    assert needle in r.stderr, r.stderr


def run_all(cases: list[tuple[str, list[str]]]) -> list[subprocess.CompletedProcess]:
    with ThreadPoolExecutor(4) as ex:
        return list(ex.map(lambda c: run_module(*c), cases))


@pytest.fixture(scope="module")
def plan_w1(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("plans") / "w1.json"
    make_plan(tiny_model(), Cluster(1, 1), Knobs((1, 1), (1, 1))).save(path)
    return str(path)


FLAG_CASES = [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--steps", "-3"], "--steps"),
    (["--warmup", "-1"], "--warmup"),
    (["--timeout", "nan"], "--timeout must be a positive, finite"),
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "-5"], "--timeout"),
    (["--timeout", "inf"], "--timeout"),
    (["--heartbeat-timeout", "nan"], "--heartbeat-timeout"),
    (["--heartbeat-timeout", "0"], "--heartbeat-timeout"),
    (["--heartbeat-timeout", "-inf"], "--heartbeat-timeout"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2 ** 64)], "--seed"),
    (["--emulate-nodes", "0"], "--emulate-nodes"),
    (["--emulate-nodes", "-2"], "--emulate-nodes"),
    (["--steps", "abc"], "invalid int value"),
    (["--timeout", "soon"], "invalid float value"),
    (["--backend", "mpi"], "invalid choice"),
    (["--issue", "many"], "invalid choice"),
    (["--bogus"], "unrecognized arguments"),
    (["--backend", "nccl"], "--backend nccl needs CUDA"),
]


def test_bad_flags_of_executor_run(plan_w1: str) -> None:
    """Checked up front: no process group, no plan loaded, one line each."""
    res = run_all([("executor.run", ["--plan", plan_w1, *args]) for args, _ in FLAG_CASES]
                  + [("executor.run", [])])
    for (args, needle), r in zip(FLAG_CASES + [([], "--plan")], res):
        assert_one_line(r, needle)


def test_bad_plans_and_traces_of_executor_run(plan_w1: str, tmp_path: Path) -> None:
    """Plans that cannot run and --trace paths that cannot be written: refused before any
    step, the plan file unchanged."""
    w2, n2 = tmp_path / "w2.json", tmp_path / "n2.json"
    make_plan(tiny_model(), Cluster(1, 2), Knobs((1, 1), (1, 1))).save(w2)
    make_plan(tiny_model(), Cluster(2, 1), Knobs((1, 1), (1, 1))).save(n2)
    bad = tmp_path / "bad.json"
    bad.write_text(Path(plan_w1).read_text().replace('"grad_chunk_bytes":', '"grad_chunk_bytes": "x", "_":', 1))
    before = Path(plan_w1).read_bytes()
    cases = [
        (["--plan", str(tmp_path / "missing.json")], "could not load its plan"),
        (["--plan", str(w2)], "the plan is for 2 ranks (1x2) but 1 rank is running; "
                              "start it with torchrun --nproc_per_node=2"),
        (["--plan", str(n2)], "the plan is for 2 ranks (2x1) but 1 rank is running; start it with torchrun "
                              "--nnodes=2 --nproc_per_node=1, or on one host --nproc_per_node=2 --emulate-nodes 2"),
        (["--plan", str(bad)], "could not load its plan"),
        (["--plan", plan_w1, "--trace", plan_w1], "same file as --plan"),
        (["--plan", plan_w1, "--trace", "/dev/null"], "special file"),
    ]
    res = run_all([("executor.run", [*args, "--steps", "1", "--warmup", "0", "--backend", "gloo",
                                     "--timeout", "20"]) for args, _ in cases])
    for (args, needle), r in zip(cases, res):
        assert_one_line(r, needle)
    assert Path(plan_w1).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "n2.json", "w2.json"]


def test_bad_flags_of_selfcheck_and_launch(plan_w1: str, tmp_path: Path) -> None:
    cases = [
        ("executor.selfcheck", ["--plan", plan_w1, "--steps", "0"], "--steps"),
        ("executor.selfcheck", ["--plan", plan_w1, "--out", plan_w1], "--out"),
        ("executor.launch", ["--nproc_per_node"], "expected one argument"),
    ]
    res = run_all([(m, a) for m, a, _ in cases])
    for (_, _, needle), r in zip(cases, res):
        assert_one_line(r, needle)


def test_trace_path_problems(plan_w1: str, tmp_path: Path) -> None:
    assert trace_path_problem(str(tmp_path / "t.json"), plan_w1) is None
    assert "same file as --plan" in trace_path_problem(os.path.relpath(plan_w1), plan_w1)
    assert "is a directory" in trace_path_problem(str(tmp_path), plan_w1)
    assert "does not exist" in trace_path_problem(str(tmp_path / "no" / "t.json"), plan_w1)
    assert "special file" in trace_path_problem("/dev/null", plan_w1)
    assert "path is empty" in trace_path_problem("", plan_w1)
    os.symlink(plan_w1, tmp_path / "link.json")
    assert "same file as --plan" in trace_path_problem(str(tmp_path / "link.json"), plan_w1)


def test_launcher_names_the_rank_that_failed_first() -> None:
    texts = {0: "moesched: error: rank 0: communication with the other ranks failed, a peer rank has probably "
                "stopped (RuntimeError: Connection reset by peer)\n", 1: ""}
    assert root_cause({0: 2, 1: -9}, texts, first=0) == 1
    assert failure_line(1, -9, "") == "rank 1 failed: killed by SIGKILL"
    texts = {0: "moesched: error: rank 1 failed: out of memory\n", 1: "warning\nmoesched: error: out of memory\n"}
    assert root_cause({0: 2, 1: 2}, texts, first=0) == 1
    assert failure_line(1, 2, texts[1]) == "rank 1 failed: out of memory"
    assert failure_line(0, 1, "a\nValueError: x\n") == "rank 0 failed with exit status 1: ValueError: x"


def test_validate_summary_without_scipy(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The rank correlation is computed without scipy (pandas' Spearman imports it)."""
    from moesched import validation_summary as validate
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    rows = [{"regime": "r", "config": "c", "schedule": s, "predicted_ms": p, "measured_ms": m, "error_pct": 1.0}
            for s, p, m in [("a", 1.0, 10.0), ("b", 2.0, 30.0), ("c", 3.0, 20.0), ("d", 4.0, 40.0)]]
    validate.summarize(rows)
    out = capsys.readouterr().out
    assert "Spearman, per config): mean 0.800" in out, out
    a, b = pd.Series([3.0, 1.0, 1.0, 2.0]), pd.Series([1.0, 2.0, 2.0, 5.0])
    monkeypatch.undo()
    assert validate.spearman(a, b) == pytest.approx(a.rank().corr(b.rank()))  # Spearman: Pearson of the ranks
