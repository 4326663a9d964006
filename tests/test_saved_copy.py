"""The copy of a layer's saved expert activations that its first expert_dx makes
(executor.tasks._saved): priced from the memory table, charged once per layer where the
forward ran in several chunks (moesched.costs.calibrate.saved_copy_us)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from moesched import ops
from moesched.cluster import Cluster
from moesched.configs import load_configs
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.profile import Profile

PROFILE = "results/h200x1/traces-validate/profiled/h200x1-one-gpu.json.gz"


@pytest.fixture(scope="module")
def prof() -> Profile:
    return Profile.load(PROFILE)


def _mixtral():
    return next(c.model for c in load_configs("results/h200x1/configs-1gpu.json") if c.name == "mixtral-2L")


def test_bytes_are_x_and_the_hidden_activations_read_and_written() -> None:
    m = _mixtral()  # SwiGLU: x [C, M], h1 and h3 [C, H], bf16
    (op,) = ops.saved_concat_ops(m, 100)
    assert op.nbytes == 2.0 * 100 * (m.d_model + 2 * m.ffn_hidden) * 2
    (gelu,) = ops.saved_concat_ops(replace(m, expert_kind="gpt"), 100)
    assert gelu.nbytes == 2.0 * 100 * (m.d_model + m.ffn_hidden) * 2
    assert ops.saved_concat_ops(m, 0) == []


def _dx(g, layer: int, chunk: int) -> dict:
    return g.nodes[f"L{layer}.B.expert_dx.c{chunk}"]


def test_first_backward_chunk_pays_the_copy_of_several_forward_chunks(prof: Profile) -> None:
    m, cl = _mixtral(), Cluster(1, 1)
    g = build(m, cl, prof, Knobs.uniform(m.layers, 2))
    copy_us = prof.ops.ops_us("bf16", ops.saved_concat_ops(m, ops.copies_of("expert_dx", m, 2 * _dx(g, 0, 0)["work"])))
    assert copy_us > 100.0  # ~1 GB moved on an H200
    for layer in range(m.layers):
        first, second = _dx(g, layer, 0), _dx(g, layer, 1)
        assert first["saved_copy_us"] == pytest.approx(copy_us)
        assert "saved_copy_us" not in second
        assert first["duration_us"] - second["duration_us"] == pytest.approx(copy_us, rel=0.02)


def test_one_forward_chunk_is_in_the_in_situ_factor(prof: Profile) -> None:
    m, cl = _mixtral(), Cluster(1, 1)
    one = build(m, cl, prof, Knobs.uniform(m.layers, 1, r_bwd=2))  # forward whole: a copy of one tensor
    assert "saved_copy_us" not in _dx(one, 0, 0)
    # ... unless no in-situ expert_dx factor carries it: then it is charged too
    bare = replace(prof, meta={k: v for k, v in prof.meta.items() if k != "insitu_compute"})
    assert _dx(build(m, cl, bare, Knobs.uniform(m.layers, 1)), 0, 0)["saved_copy_us"] > 0
    # ... and nothing without a memory table to price it
    assert "saved_copy_us" not in _dx(build(m, cl, replace(prof, ops=None), Knobs.uniform(m.layers, 2)), 0, 0)
