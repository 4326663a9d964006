"""The DEP forward pass (executor.dep) on gloo: 4 processes as (ag, eg) = (1, 3) and (2, 2),
with and without a shared expert, r1 and r2 > 1, a dense layer among the MoE ones; every
attention rank's output equals the single-process reference (executor.depcheck). Bad groups:
one line, exit 2, on every rank."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from localhost import free_port

from tests.test_executor_exact import torchrun as run_module


def torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    return run_module(nproc, "executor.depcheck", args, free_port())


@pytest.mark.parametrize("ag,r1,r2,shared", [(1, 2, 2, False), (1, 3, 2, True), (2, 2, 3, True), (2, 2, 2, False)])
def test_dep_forward_equals_the_reference(tmp_path: Path, ag: int, r1: int, r2: int, shared: bool) -> None:
    out = tmp_path / "dep.jsonl"
    p = torchrun(4, ["--ag", str(ag), "--r1", str(r1), "--r2", str(r2), "--out", str(out)] + (["--shared"] if shared else []))
    assert p.returncode == 0, p.stderr[-3000:]
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["ok"] and rec["max_abs_err"] < 1e-5 and (rec["ag"], rec["eg"]) == (ag, 4 - ag)
    # every routed copy of the two MoE layers went to an expert rank and came back
    assert rec["copies"] == ag * 2 * (r1 * 2 * 8) * 2


@pytest.mark.parametrize("args,needle", [
    (["--ag", "4"], "--ag must leave"),                                   # no expert rank
    (["--ag", "1", "--eg", "2"], "= 3 ranks, but the world has 4"),       # (ag, eg) not the world size
    (["--ag", "1", "--experts", "10"], "10 experts do not divide over 3 expert ranks"),
])
def test_bad_groups_are_one_line_exit_2_on_every_rank(args: list[str], needle: str) -> None:
    p = torchrun(4, args)
    lines = [x for x in p.stderr.splitlines() if x.startswith("moesched: error:")]
    assert p.returncode != 0 and len(lines) == 4 and all(needle in x for x in lines), p.stderr[-2000:]
    # torchrun's report: the first rank to exit exited 2; a rank it saw later exited 2 too, or was
    # ended by torchrun's own SIGTERM (-15) after its line was printed
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", p.stderr)
    assert "failed (exitcode: 2)" in p.stderr and set(codes) <= {"2", "-15"}, p.stderr[-3000:]
    assert "Traceback" not in p.stderr.split("moesched: error:")[0]


def test_three_processes_divide_the_experts(tmp_path: Path) -> None:
    p = torchrun(3, ["--ag", "1", "--eg", "2", "--out", str(tmp_path / "x.jsonl")])  # 12 experts over 2 ranks
    assert p.returncode == 0, p.stderr[-2000:]
