"""Routing traces recorded by the executor (executor.run --record-routing) equal the routing
of the single-process reference on every rank's batch."""
from __future__ import annotations

from pathlib import Path

import pytest
from localhost import free_port

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.knobs import Knobs
from moesched.routing_trace import load

from executor.layers import ReferenceModel, make_batch
from executor.run import check_args, parse_args
from executor.testplans import make_plan, tiny_model
from tests.test_executor_exact import save, torchrun

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kw", [dict(capacity_factor=1.0), dict(router="sigmoid", experts=8, top_k=3),
                                dict(router="expert_choice")])
def test_recorded_trace_equals_reference_routing(tmp_path: Path, kw: dict) -> None:
    m = tiny_model(**kw)
    path = save([make_plan(m, Cluster(1, 2), Knobs((2, 1), (1, 2)))], tmp_path)[0]
    out = tmp_path / "routing.jsonl"
    r = torchrun(2, "executor.run", ["--plan", path, "--steps", "1", "--warmup", "1", "--record-routing", str(out)],
                 free_port())
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    trace = load(out)
    h = trace.header
    assert (h.layers, h.experts, h.ep, h.tokens_per_rank, h.top_k, h.router) == (
        m.layers, m.experts, 2, m.tokens, m.top_k, m.router)
    assert trace.steps == [0, 1]
    for rank in range(2):
        ref = ReferenceModel(m)
        ref.blocks(make_batch(m, rank)[0])
        for rec in trace.step(1):
            assert list(rec.copies[rank]) == ref.load[rec.layer].tolist()
            assert sum(rec.copies[rank]) == m.tokens * m.top_k  # before capacity; expert choice: E x C = T x k


def test_record_routing_output_is_checked_first(tmp_path: Path) -> None:
    plan = tmp_path / "p.json"
    plan.write_text("{}")
    with pytest.raises(MoeschedError, match="is a directory"):
        check_args(parse_args(["--plan", str(plan), "--record-routing", str(tmp_path)]))
    with pytest.raises(MoeschedError, match="same file"):
        check_args(parse_args(["--plan", str(plan), "--record-routing", str(plan)]))


def test_training_example_records_routing_with_accumulation(tmp_path: Path) -> None:
    """The training API: examples/train_moe_lm.py --record-routing, 2 micro-batches per step
    (their copies add up), a deepseek_v3 router with the load-balancing loss."""
    import subprocess
    import sys

    from tests.test_executor_exact import ROOT, env
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "--master_addr=127.0.0.1", str(ROOT / "examples" / "train_moe_lm.py"), "--text-bytes", "200000",
           "--steps", "3", "--accum", "2", "--seq-len", "16", "--batch", "2", "--router", "sigmoid",
           "--aux-loss-coef", "0.01", "--record-routing", str(out)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    t = load(out)
    assert t.steps == [0, 1, 2] and t.header.router == "sigmoid"
    assert t.header.tokens_per_rank == 2 * 16 * 2 and t.header.ep == 2
    assert all(sum(row) == 64 * 2 for rec in t.records for row in rec.copies)  # 2 micro-batches x 32 tokens x k=2


def test_gpu_routing_benchmark_runs_on_cpu(tmp_path: Path) -> None:
    """benchmarks/routing_groups.py (what gpu_routing.sh runs) on a small shape on the CPU."""
    import json
    import subprocess
    import sys

    from tests.test_executor_exact import ROOT, env
    r = subprocess.run([sys.executable, "benchmarks/routing_groups.py", "--device", "cpu", "--small", "--samples", "1",
                        "--reps", "1", "--profile", "cpu-gloo-2", "--out", str(tmp_path)], cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "routing_groups.jsonl").read_text().splitlines()]
    assert len(lines) == 4 + 1 and lines[-1]["summary"]
    assert all(sum(x["groups"]) == x["rows"] and x["measured_us"] > 0 for x in lines[:-1])
