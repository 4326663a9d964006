"""``torchrun -m executor.run --plan`` runs a PPMoE layout plan (executor.layoutstep) in plan
order on gloo: the loss and every rank's gradients equal the single-process reference's
within fp32 tolerance for TP2, TP4 (+SP) and TP2 x DP2 (+SP)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from localhost import free_port

from moesched.cluster import Cluster
from moesched.knobs import Knobs
from moesched.layoutgraph import build
from moesched.layouts import Layout
from moesched.plan import from_timeline
from moesched.sim import simulate

ROOT = Path(__file__).resolve().parents[1]


def _plan(case: str, world: int, layout: Layout, path: Path) -> None:
    from executor.tpcheck import CASES
    m, c = CASES[case], Cluster(1, world)
    from_timeline("ppmoe", m, c, Knobs.uniform(m.layers, 1), simulate(build(m, c, None, layout)),
                  layout=layout).save(path)


def _torchrun(nproc: int, plan: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "--master_addr=127.0.0.1", "-m", "executor.run", "--plan", str(plan), "--backend", "gloo"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)


@pytest.mark.parametrize("case,world,tp,sp", [
    ("gpt-dropless", 2, 2, False),
    ("swiglu-shared-capacity-gqa", 4, 4, True),
    ("swiglu-shared-capacity-gqa", 4, 2, True),   # TP2 x DP2
    ("gpt-dropless", 4, 2, False),                # TP2 x DP2
])
def test_layout_plan_matches_the_reference(case: str, world: int, tp: int, sp: bool, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    _plan(case, world, Layout(tp, sp), plan)
    p = _torchrun(world, plan)
    assert p.returncode == 0, p.stderr[-4000:]
    res = json.loads([line for line in p.stdout.splitlines() if line.startswith("{")][-1])
    assert (res["tp"], res["dp"], res["sp"], res["ok"]) == (tp, world // tp, sp, True), res
    assert res["max_abs_err"] < 1e-5 and abs(res["loss"] - res["ref_loss"]) < 1e-5 * abs(res["ref_loss"])


def test_layout_plan_with_trace_is_refused_on_every_rank(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    _plan("gpt-dropless", 2, Layout(2), plan)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "--master_addr=127.0.0.1", "-m", "executor.run", "--plan", str(plan), "--backend", "gloo",
           "--trace", str(tmp_path / "t.json")]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert p.returncode != 0
    assert "layout plans run one checked step on gloo/CPU only" in p.stderr
    assert not (tmp_path / "t.json").exists()
