"""The executor's loss and gradients equal the reference model's, on gloo, under real torchrun.

Each test launches one torchrun job that checks many plans in turn (``executor.selfcheck``):
vanilla (r=1, serialized), r_fwd != r_bwd, chunked attention, tiny gradient chunks, expert
data parallelism, shared experts, SwiGLU and GPT experts, dropless and capacity 1.0 (with
dropped copies), two-hop all-to-all, and random plans in random topological orders. One
test runs as two torchrun "nodes" on localhost.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from localhost import free_port

from moesched.cluster import Cluster
from moesched.knobs import Knobs

from executor.testplans import make_plan, random_plan, tiny_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow




def env() -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e.pop("CUDA_VISIBLE_DEVICES", None)
    return e


def save(plans, tmp: Path) -> list[str]:
    tmp.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, p in enumerate(plans):
        path = tmp / f"plan{i}.json"
        p.save(path)
        paths.append(str(path))
    return paths


def torchrun(nproc: int, module: str, args: list[str], port: int, extra: list[str] | None = None,
             timeout: float = 200.0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={port}", *(extra or ["--master_addr=127.0.0.1"]), "-m", module, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def results(out: Path, n: int, log: str) -> list[dict]:
    assert out.exists(), log[-4000:]
    res = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(res) == n, log[-4000:]
    bad = [r for r in res if not r["ok"]]
    assert not bad, bad
    return res


def test_exact_two_ranks(tmp_path: Path) -> None:
    c = Cluster(1, 2)
    L = 2
    plans = [
        make_plan(tiny_model(), c, Knobs.uniform(L, 1, serialize=True)),                      # vanilla EP
        make_plan(tiny_model(), c, Knobs((2, 1), (1, 4))),                                    # r_fwd != r_bwd
        make_plan(tiny_model(capacity_factor=1.0, shared_experts=1, expert_kind="swiglu"), c,
                  Knobs((2, 4), (4, 2), at_chunked=True, grad_chunk_bytes=1001)),
        make_plan(tiny_model(capacity_factor=1.0), c, Knobs((4, 1), (2, 2), at_chunked=True, grad_chunk_bytes=6),
                  random.Random(1)),
        make_plan(tiny_model(shared_experts=2), c, Knobs((2, 2), (2, 2), at_chunked=True, grad_sync="after_backward"),
                  random.Random(2)),
        make_plan(tiny_model(expert_kind="swiglu", top_k=1, capacity_factor=1.5), c,
                  Knobs((16, 8), (1, 16), grad_chunk_bytes=512), random.Random(3)),
    ]
    rng = random.Random(11)
    plans += [random_plan(rng, c) for _ in range(6)]
    out = tmp_path / "res.jsonl"
    r = torchrun(2, "executor.selfcheck", ["--plan", *save(plans, tmp_path), "--out", str(out)], free_port())
    res = results(out, len(plans), r.stdout + r.stderr)
    assert r.returncode == 0
    assert res[2]["dropped"] > 0 and res[3]["dropped"] > 0 and res[0]["dropped"] == 0


def test_exact_four_ranks(tmp_path: Path) -> None:
    plans = [
        make_plan(tiny_model(), Cluster(1, 4, ep=2), Knobs((2, 1), (1, 2), grad_chunk_bytes=3000)),   # expert DP
        make_plan(tiny_model(capacity_factor=1.0, shared_experts=1, expert_kind="swiglu"), Cluster(2, 2),
                  Knobs((2, 2), (4, 1), a2a="hierarchical", at_chunked=True, grad_chunk_bytes=777), random.Random(3)),
        make_plan(tiny_model(experts=8), Cluster(2, 2, ep=2), Knobs((1, 2), (2, 4), grad_chunk_bytes=2000),
                  random.Random(4)),
        make_plan(tiny_model(experts=8, top_k=3), Cluster(2, 2), Knobs((4, 2), (1, 2), a2a="hierarchical")),
    ]
    rng = random.Random(5)
    plans += [random_plan(rng, c) for c in (Cluster(1, 4), Cluster(2, 2), Cluster(1, 4, ep=2))]
    out = tmp_path / "res.jsonl"
    r = torchrun(4, "executor.selfcheck", ["--plan", *save(plans, tmp_path), "--out", str(out), "--steps", "1",
                                           "--issue", "threads"], free_port(), timeout=230)
    results(out, len(plans), r.stdout + r.stderr)
    assert r.returncode == 0


def test_exact_two_torchrun_nodes(tmp_path: Path) -> None:
    """Two torchrun processes (--nnodes=2, one rank each) on localhost, a 2x1 cluster."""
    c = Cluster(2, 1)
    plans = [make_plan(tiny_model(), c, Knobs((2, 1), (1, 2), grad_chunk_bytes=1000)),
             make_plan(tiny_model(shared_experts=1), c, Knobs((2, 2), (2, 2), a2a="hierarchical", at_chunked=True),
                       random.Random(7))]
    paths = save(plans, tmp_path)
    out = tmp_path / "res.jsonl"
    port = free_port()
    procs = []
    for node in range(2):
        extra = ["--nnodes=2", f"--node_rank={node}", "--master_addr=127.0.0.1"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={port}", *extra,
               "-m", "executor.selfcheck", "--plan", *paths, "--out", str(out), "--steps", "1"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    logs = [p.communicate(timeout=200)[0] for p in procs]
    results(out, len(plans), "\n".join(logs))
    assert [p.returncode for p in procs] == [0, 0]


def test_run_entry_point_writes_trace(tmp_path: Path) -> None:
    plan = make_plan(tiny_model(shared_experts=1), Cluster(1, 2), Knobs((2, 2), (1, 2), grad_chunk_bytes=2048))
    path = save([plan], tmp_path)[0]
    trace = tmp_path / "trace.json"
    r = torchrun(2, "executor.run", ["--plan", path, "--steps", "2", "--warmup", "1", "--trace", str(trace),
                                     "--issue", "threads"], free_port())
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "median step" in r.stdout and "tokens/s" in r.stdout
    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"]
    tasks, host = [e for e in events if e["tid"] < 10], [e for e in events if e["tid"] >= 10]
    assert sorted({e["pid"] for e in events}) == [0, 1]
    assert sorted(e["name"] for e in tasks if e["pid"] == 0) == sorted(plan.order)
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in events)
    assert {e["tid"] for e in tasks} == {0, 1}  # compute and comm_intra
    # host launch intervals: every task once per rank, compute and comm from their threads
    assert sorted(e["name"] for e in host if e["pid"] == 1) == sorted(plan.order)
    assert {(e["tid"], e["cat"]) for e in host} == {(10, "host"), (11, "host")}


def _policy_plans(model, cluster: Cluster, profile_name: str) -> list:
    """The plan of every published policy and moesched's solved plan, as the CLI makes them."""
    from moesched.plan import from_timeline
    from moesched.profile import Profile
    from moesched.schedules import POLICIES, get
    from moesched.schedules.base import evaluate
    from moesched.solve.api import solve
    prof = Profile.load(profile_name)
    evs = [evaluate(model, cluster, prof, get(n).schedule(model, cluster, prof)) for n in POLICIES]
    evs.append(solve(model, cluster, prof).evaluation)
    names = list(POLICIES) + ["moesched"]
    return [from_timeline(n, model, cluster, ev.schedule.knobs, ev.timeline, prof) for n, ev in zip(names, evs)]


def test_exact_every_published_policy(tmp_path: Path) -> None:
    """Every policy's plan (and moesched's) gives the reference's loss and gradients: 2 ranks on
    the CPU profile, and 4 ranks as 2 nodes x 2 on the analytic two-node profile."""
    m = tiny_model(capacity_factor=1.0, shared_experts=1)   # batch 4: FlowMoE chunks attention
    for nproc, cluster, prof in ((2, Cluster(1, 2), "cpu-gloo-2"), (4, Cluster(2, 2), "analytic-h200x4-2nodes")):
        plans = _policy_plans(m, cluster, prof)
        assert any(p.knobs.at_chunked for p in plans) and any(p.knobs.serialize for p in plans)
        out = tmp_path / f"res{nproc}.jsonl"
        r = torchrun(nproc, "executor.selfcheck",
                     ["--plan", *save(plans, tmp_path / f"n{nproc}"), "--out", str(out), "--steps", "1"],
                     free_port(), timeout=230)
        res = results(out, len(plans), r.stdout + r.stderr)
        assert r.returncode == 0
        assert [Path(x["plan"]).name for x in res] == [f"plan{i}.json" for i in range(len(plans))]
