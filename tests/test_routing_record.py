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


@pytest.mark.parametrize("kw", [dict(capacity_factor=1.0), dict(router="sigmoid", experts=8, top_k=3)])
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
            assert sum(rec.copies[rank]) == m.tokens * m.top_k  # before capacity: nothing dropped here


def test_record_routing_output_is_checked_first(tmp_path: Path) -> None:
    plan = tmp_path / "p.json"
    plan.write_text("{}")
    with pytest.raises(MoeschedError, match="is a directory"):
        check_args(parse_args(["--plan", str(plan), "--record-routing", str(tmp_path)]))
    with pytest.raises(MoeschedError, match="same file"):
        check_args(parse_args(["--plan", str(plan), "--record-routing", str(plan)]))
