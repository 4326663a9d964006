"""The language model around the planned blocks (:mod:`executor.lm`): loss and accumulated
gradients of two micro-batches equal a plain single-process reference LM on gloo with 1 and
2 processes (untied, tied + shared experts + GELU, GQA + RoPE + qk-norm + capacity with
chunked degrees); wrong tokens give one MoeschedError line."""
from __future__ import annotations

import json

import pytest
import torch
from localhost import free_port
from test_executor_exact import torchrun

from moesched.errors import MoeschedError

from executor.lm import MoELM, _check_tokens
from executor.testplans import tiny_model


@pytest.mark.parametrize("nproc", [1, 2])
def test_lm_step_equals_reference_lm(tmp_path, nproc):
    out = tmp_path / "r.jsonl"
    r = torchrun(nproc, "executor.lmcheck", ["--out", str(out)], free_port())
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    res = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["model"] for x in res] == ["untied", "tied-gelu-shared", "gqa-rope-qknorm"]
    assert all(x["ok"] for x in res), res
    assert all(x["max_abs_err"] < 1e-4 for x in res), res


def test_lm_needs_vocab():
    with pytest.raises(MoeschedError, match="vocab_size"):
        MoELM(tiny_model())


@pytest.mark.parametrize("bad, words", [
    (torch.zeros(4, 8), "integer token ids"),
    (torch.zeros(4, 7, dtype=torch.long), r"shape \[micro_batch, seq_len\] = \[4, 8\]"),
    ([[0] * 8] * 4, "torch.Tensor"),
    (torch.zeros(4, 8, dtype=torch.long, device="meta"), "on meta but the model is on cpu"),
])
def test_lm_rejects_bad_tokens(bad, words):
    lm = MoELM(tiny_model(vocab_size=11))
    with pytest.raises(MoeschedError, match=words):
        _check_tokens("tokens", bad, lm)


def test_profiler_trace_names_the_plans_tasks(tmp_path):
    """Under torch.profiler every task of the plan appears as a moesched:<task> label."""
    import os
    import torch.distributed as dist
    from moesched.cluster import Cluster
    from moesched.knobs import Knobs
    from executor.lm import LMStep
    from executor.testplans import make_plan
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        m = tiny_model(vocab_size=11, experts=2)
        plan = make_plan(m, Cluster(1, 1), Knobs((2, 1), (1, 2)))
        step = LMStep(MoELM(m), plan)
        tok = torch.zeros(4, 8, dtype=torch.long)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(tok, tok)
        names = {e.name for e in prof.events()}
        assert {f"moesched:{t}" for t in plan.order} <= names
    finally:
        dist.destroy_process_group()
