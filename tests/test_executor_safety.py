"""executor.run refuses mismatched plans on every rank: one identical ``moesched: error:``
line per rank on stderr, exit status 2, no hang (gloo, ranks launched as torchrun would, via RANK/WORLD_SIZE)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from localhost import free_port

from moesched.cluster import Cluster
from moesched.knobs import Knobs

from executor.testplans import make_plan, tiny_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow




def launch(plan_paths: list[str], world: int, timeout_s: int = 20) -> list[tuple[int, str]]:
    """Start len(plan_paths) ranks of a world of ``world`` (rank r gets plan_paths[r]);
    return (exit status, stderr) per rank."""
    port = free_port()
    procs = []
    for rank, path in enumerate(plan_paths):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, "-m", "executor.run", "--plan", path, "--steps", "1", "--warmup", "0",
               "--backend", "gloo", "--timeout", str(timeout_s)]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return [(p.wait(timeout=90), p.communicate()[1]) for p in procs]


def assert_same_error(res: list[tuple[int, str]], needle: str) -> None:
    lines = []
    for code, err in res:
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith("moesched: error:"), err  # one line, no traceback
        errs = err.splitlines()
        lines.append(errs[0])
    assert len(set(lines)) == 1, lines
    assert needle in lines[0], lines[0]


@pytest.fixture
def plans(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name, c, k in [("w2", Cluster(1, 2), Knobs((1, 1), (1, 1))), ("w2b", Cluster(1, 2), Knobs((2, 1), (1, 1))),
                       ("w4", Cluster(1, 4), Knobs((1, 1), (1, 1)))]:
        path = tmp_path / f"{name}.json"
        make_plan(tiny_model(), c, k).save(path)
        out[name] = str(path)
    bad = json.loads(Path(out["w2"]).read_text())
    bad["knobs"]["r_fwd"] = [2, 2]  # edited without a new hash
    (tmp_path / "corrupt.json").write_text(json.dumps(bad))
    out["corrupt"] = str(tmp_path / "corrupt.json")
    return out


def test_plan_for_another_world_size(plans: dict[str, str]) -> None:
    t0 = time.time()
    assert_same_error(launch([plans["w4"]] * 2, 2),
                      "the plan is for 4 ranks (1x4) but 2 ranks are running; start it with torchrun --nproc_per_node=4")
    assert time.time() - t0 < 60


def test_corrupted_plan_everywhere(plans: dict[str, str]) -> None:
    assert_same_error(launch([plans["corrupt"]] * 2, 2), "rank 0 could not load its plan")


def test_corrupted_plan_on_one_rank(plans: dict[str, str]) -> None:
    assert_same_error(launch([plans["w2"], plans["corrupt"]], 2), "rank 1 could not load its plan: ")


def test_ranks_hold_different_plans(plans: dict[str, str]) -> None:
    assert_same_error(launch([plans["w2"], plans["w2b"]], 2), "ranks hold different plans")


def test_missing_peer_does_not_hang(plans: dict[str, str]) -> None:
    t0 = time.time()
    [(code, out)] = launch([plans["w2"]], 2, timeout_s=5)
    assert code == 2 and out.startswith("moesched: error:") and out.count("\n") == 1, out
    assert time.time() - t0 < 60
