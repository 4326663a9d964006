"""Replicated and moved experts on gloo (executor.placecheck under real torchrun): a step with
replicas gives the reference's loss and gradients, and training with Adam across two
placement changes (parameters and Adam state moved) matches a run that never moved."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from localhost import free_port

ROOT = Path(__file__).resolve().parents[1]


def torchrun(nproc: int, args: list[str], launcher: str = "torch.distributed.run") -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", launcher, f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "--master_addr=127.0.0.1", "-m", "executor.placecheck", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)


@pytest.mark.parametrize("nproc", [2, 4])
@pytest.mark.parametrize("schedule", [[], ["--split"]], ids=["replicas", "split-experts"])
def test_training_across_placement_changes_matches_the_never_moved_reference(nproc, schedule, tmp_path):
    """Replicas and moves; with --split, split experts compared slice by slice."""
    out = tmp_path / "r.jsonl"
    r = torchrun(nproc, ["--out", str(out), *schedule])
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    res = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["model"] for x in res] == ["swiglu-shared", "gelu-capacity"], log[-4000:]
    for x in res:
        assert x["ok"] and x["max_abs_err"] < 1e-4 and x["copied"] > 0, x


def test_a_bad_placement_is_one_line_and_exit_2_on_every_rank(tmp_path):
    r = torchrun(2, ["--out", str(tmp_path / "r.jsonl"), "--bad"])  # plain torchrun: each rank's own line
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.startswith("moesched: error:")]
    assert len(lines) == 2 and all("named twice" in l for l in lines), r.stderr[-3000:]
    r = torchrun(2, ["--out", str(tmp_path / "r.jsonl"), "--bad"], launcher="executor.launch")
    assert r.returncode == 2 and not r.stdout.strip()
    assert r.stderr.strip().startswith("moesched: error: rank") and "named twice" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_schedule_from_the_replay_trains_like_the_reference(tmp_path):
    from moesched.cli import main
    sched = tmp_path / "s.json"
    assert main(["placement", "--model", "Mixtral-7B-FSMoE", "--layers", "2", "--cluster", "1x2", "--routing",
                 "zipf:1.5", "--steps", "12", "--interval", "4", "--slots", "2", "--policies", "static,eplb",
                 "--schedule-out", str(sched), "--schedule-policy", "eplb"]) == 0
    out = tmp_path / "r.jsonl"
    r = torchrun(2, ["--out", str(out), "--schedule", str(sched)])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(res) == 2 and all(x["ok"] and x["copied"] > 0 for x in res), res
    r = torchrun(4, ["--out", str(tmp_path / "bad.jsonl"), "--schedule", str(sched)], launcher="executor.launch")
    assert r.returncode == 2 and "is for 2 ranks, this job has 4" in r.stderr, r.stderr[-2000:]
