"""examples/train_moe_lm.py under torchrun on 2 CPU processes (gloo): the byte-level loss on
the standard library's sources falls over 30 steps, checkpoints are written with
torch.distributed.checkpoint, and a run resumed from step 20 gives the same losses for the
next steps as the uninterrupted run."""
from __future__ import annotations

import json
import subprocess
import sys

from localhost import free_port
from test_executor_exact import ROOT, env

SCRIPT = ROOT / "examples" / "train_moe_lm.py"


def run(tmp, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "--master_addr=127.0.0.1", str(SCRIPT), "--text-bytes", "400000", *args]
    return subprocess.run(cmd, cwd=tmp, env=env(), capture_output=True, text=True, timeout=120)


def losses(path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


def test_training_example_learns_and_resumes_exactly(tmp_path):
    full, resumed, ck = tmp_path / "full.jsonl", tmp_path / "resumed.jsonl", tmp_path / "ck"
    r = run(tmp_path, "--steps", "30", "--ckpt-dir", str(ck), "--ckpt-every", "20", "--metrics", str(full))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "step 30/30  loss" in r.stdout and "tok/s" in r.stdout and "ms predicted" in r.stdout
    a = losses(full)
    assert sorted(a) == list(range(1, 31))
    first, last = sum(a[s] for s in range(1, 6)) / 5, sum(a[s] for s in range(26, 31)) / 5
    assert last < 0.7 * first, (first, last)
    assert (ck / "step_20" / ".metadata").is_file() and (ck / "step_30" / ".metadata").is_file()
    r = run(tmp_path, "--steps", "30", "--stop-at", "23", "--resume", str(ck / "step_20"), "--metrics", str(resumed))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "resumed from" in r.stdout
    b = losses(resumed)
    assert sorted(b) == [21, 22, 23]
    for s in b:
        assert abs(b[s] - a[s]) <= 1e-6 * abs(a[s]), (s, b[s], a[s])


def test_training_example_refuses_a_bad_checkpoint(tmp_path):
    r = run(tmp_path, "--steps", "2", "--resume", str(tmp_path / "nowhere"))
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("moesched: error:")]
    assert lines and "not a step_N checkpoint folder" in lines[0], r.stderr[-2000:]
