"""Every router of the executor, dropless and with capacity, with and without the auxiliary
losses: loss and gradients equal the single-process reference (executor.selfcheck) on gloo,
2 and 4 processes; deepseek_v3 also its bias after each step."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from localhost import free_port

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.knobs import Knobs

from executor.layers import MoEModule
from executor.runtime import PlannedStep
from executor.testplans import make_plan, tiny_model
from tests.test_executor_exact import results, save, torchrun

pytestmark = pytest.mark.slow


def test_routers_exact_two_ranks(tmp_path: Path) -> None:
    c = Cluster(1, 2)
    plans = [
        make_plan(tiny_model(router="switch", top_k=1, capacity_factor=1.0), c, Knobs((2, 1), (1, 2))),
        make_plan(tiny_model(router="sigmoid", shared_experts=1, expert_kind="swiglu"), c,
                  Knobs((2, 2), (2, 2), at_chunked=True), random.Random(1)),
        make_plan(tiny_model(router="deepseek_v3", router_groups=2, router_group_topk=1, bias_update_rate=0.05,
                             capacity_factor=1.5), c, Knobs((1, 2), (2, 1), grad_chunk_bytes=1001)),
        make_plan(tiny_model(router="xmoe", router_dim=4, aux_loss_coef=0.1, z_loss_coef=0.01), c,
                  Knobs((2, 2), (4, 1), at_chunked=True), random.Random(2)),
        make_plan(tiny_model(aux_loss_coef=0.2, z_loss_coef=0.05, capacity_factor=1.0), c,
                  Knobs((4, 1), (2, 2), at_chunked=True, grad_chunk_bytes=6), random.Random(3)),
        make_plan(tiny_model(router="deepseek_v3", aux_loss_coef=0.1, experts=8, router_groups=4,
                             router_group_topk=2, bias_update_rate=0.05), c, Knobs((2, 2), (2, 2))),
        make_plan(tiny_model(router="expert_choice", shared_experts=1), c, Knobs((2, 1), (1, 4)), random.Random(5)),
        make_plan(tiny_model(router="expert_choice", capacity_factor=1.5, expert_kind="swiglu", experts=8), c,
                  Knobs((4, 2), (2, 2), grad_chunk_bytes=999)),
    ]
    out = tmp_path / "res.jsonl"
    r = torchrun(2, "executor.selfcheck", ["--plan", *save(plans, tmp_path), "--out", str(out), "--steps", "2"],
                 free_port())
    res = results(out, len(plans), r.stdout + r.stderr)
    assert r.returncode == 0
    assert res[0]["dropped"] > 0 and res[4]["dropped"] > 0


def test_routers_exact_four_ranks(tmp_path: Path) -> None:
    plans = [
        make_plan(tiny_model(router="deepseek_v3", experts=8, router_groups=4, router_group_topk=2,
                             bias_update_rate=0.05, z_loss_coef=0.01), Cluster(1, 4), Knobs((2, 1), (1, 2))),
        make_plan(tiny_model(router="switch", top_k=1, aux_loss_coef=0.1, capacity_factor=1.0), Cluster(2, 2),
                  Knobs((2, 2), (2, 1), a2a="hierarchical"), random.Random(4)),
        make_plan(tiny_model(router="xmoe", capacity_factor=1.0, aux_loss_coef=0.05), Cluster(1, 4, ep=2),
                  Knobs((1, 2), (2, 2), grad_chunk_bytes=2000)),
        make_plan(tiny_model(router="expert_choice", experts=8), Cluster(2, 2), Knobs((2, 2), (2, 1), a2a="hierarchical")),
    ]
    out = tmp_path / "res.jsonl"
    r = torchrun(4, "executor.selfcheck", ["--plan", *save(plans, tmp_path), "--out", str(out), "--steps", "2"],
                 free_port(), timeout=230)
    results(out, len(plans), r.stdout + r.stderr)
    assert r.returncode == 0


def test_expert_choice_with_chunked_attention_is_refused() -> None:
    m = tiny_model(router="expert_choice")
    plan = make_plan(m, Cluster(1, 1), Knobs((2, 2), (2, 2), at_chunked=True))
    with pytest.raises(MoeschedError, match="at_chunked false"):
        PlannedStep(MoEModule(m), plan)
