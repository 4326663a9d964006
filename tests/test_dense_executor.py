"""Dense (non-MoE) layers in the executor, against ``transformers``: tiny random Qwen3-MoE
models with ``mlp_only_layers`` (config class, no download), saved as safetensors, load into
:class:`executor.lm.MoELM`; the plan interpreter's logits, loss and gradients equal
transformers' on gloo with 1 and 2 processes (EP = 2). Also the single-process reference."""
from __future__ import annotations

import json

import pytest
import torch
from localhost import free_port
from test_executor_exact import torchrun
from test_hf import COMMON, reference

from moesched.models import MoEModel

transformers = pytest.importorskip("transformers")


def qwen3_dense(layers: int, dense: list[int]):
    c = transformers.Qwen3MoeConfig(**{**COMMON, "num_hidden_layers": layers}, intermediate_size=40,
                                    moe_intermediate_size=24, head_dim=12, num_experts=4, norm_topk_prob=True,
                                    mlp_only_layers=dense)
    return transformers.Qwen3MoeForCausalLM(c)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """A dense first layer (2 layers, mlp_only_layers=[0]); a dense middle layer (3, [1])."""
    out = []
    for name, layers, dense in (("first", 2, [0]), ("middle", 3, [1])):
        d = tmp_path_factory.mktemp(f"qwen3_dense_{name}")
        reference(qwen3_dense(layers, dense), d)
        out.append(d)
    return out


@pytest.mark.parametrize("nproc", [1, 2])
def test_dense_layers_equal_transformers(tmp_path, cases, nproc):
    out = tmp_path / "r.jsonl"
    args = [a for d in cases for a in ("--case", str(d))] + ["--out", str(out)]
    r = torchrun(nproc, "executor.hfcheck", args, free_port())
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    res = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["case"] for x in res] == [d.name for d in cases]
    for x in res:
        assert x["ok"], x
        assert x["logits_err"] < 1e-4 and x["grad_err"] < 1e-4, x


def test_reference_model_dense_layer_is_attention_plus_ffn():
    """ReferenceModel on a dense layer: y = h + SwiGLU(u) with the layer's sw1/sw3/sw2 and
    nothing routed; its parameters are exactly MoEModel.dense_layer_params()."""
    import torch.nn.functional as F

    from executor.layers import MoEModule, ReferenceModel, attention_norm
    m = MoEModel(name="t", layers=2, d_model=32, heads=4, seq_len=8, micro_batch=2, ffn_hidden=16, experts=4,
                 top_k=2, expert_kind="swiglu", dtype="fp32", dense_layers=(1,), dense_ffn_hidden=24)
    mod = MoEModule(m)
    blk = mod.blocks[1]
    assert sum(p.numel() for p in blk.dense_params()) == m.dense_layer_params() and blk.expert_params() == []
    ref = ReferenceModel(m, module=mod)
    x = torch.randn(2, 8, 32)
    y1 = ref.blocks(x)
    assert ref.load[1].sum() == 0 and ref.load[0].sum() == 2 * 8 * 2
    # recompute layer 1 by hand from layer 0's output
    ref2 = ReferenceModel(m.__class__(**{**m.to_dict(), "layers": 1, "dense_layers": [], "dense_ffn_hidden": None}))
    ref2.module.blocks[0].load_state_dict(mod.blocks[0].state_dict())
    h, u = attention_norm(ref2.blocks(x), blk, m)
    want = h + (F.silu(u @ blk.sw1.t()) * (u @ blk.sw3.t())) @ blk.sw2.t()
    assert torch.allclose(y1, want, atol=1e-6)


def _dense_plans(world: int) -> list:
    import random

    from moesched.cluster import Cluster
    from moesched.knobs import Knobs

    from executor.testplans import make_plan, tiny_model
    c = Cluster(1, world)
    return [
        make_plan(tiny_model(layers=3, dense_layers=(0,), dense_ffn_hidden=24, expert_kind="swiglu", shared_experts=1),
                  c, Knobs((2, 1, 4), (1, 4, 2), at_chunked=True, grad_chunk_bytes=777), random.Random(1)),
        make_plan(tiny_model(layers=3, dense_layers=(1, 2), dense_ffn_hidden=8, capacity_factor=1.0), c,
                  Knobs((4, 2, 1), (2, 1, 4), grad_sync="after_backward"), random.Random(2)),
        make_plan(tiny_model(dense_layers=(1,), dense_ffn_hidden=40, router="deepseek_v3", expert_kind="swiglu"), c,
                  Knobs((1, 2), (2, 2), at_chunked=True, grad_chunk_bytes=500)),
    ]


@pytest.mark.parametrize("nproc", [1, 2])
def test_dense_layers_exact_vs_reference(tmp_path, nproc):
    """The plan interpreter with dense first, middle and last layers (chunked attention,
    capacity, shared experts in the MoE layers, gradient chunks across a dense layer's
    bytes, a random task order) equals executor.layers.ReferenceModel over two steps."""
    from test_executor_exact import results, save
    plans = _dense_plans(nproc)
    out = tmp_path / "res.jsonl"
    r = torchrun(nproc, "executor.selfcheck", ["--plan", *save(plans, tmp_path), "--out", str(out)], free_port())
    results(out, len(plans), r.stdout + r.stderr)
    assert r.returncode == 0


def test_gradient_buffers_match_the_graphs_bytes():
    """The executor's flat gradient buffers (laid out last layer first) hold exactly the
    bytes the task graph's gradient chunks cover, dense layers included."""
    from moesched import dense

    from executor.layers import MoEModule, grad_buffers
    m = MoEModel(name="t", layers=3, d_model=16, heads=2, seq_len=8, micro_batch=2, ffn_hidden=32, experts=4,
                 top_k=2, shared_experts=1, expert_kind="swiglu", dtype="fp32", dense_layers=(1,), dense_ffn_hidden=24)
    mod = MoEModule(m, ep=2, ep_rank=1)
    bufs = grad_buffers(mod)
    for group in ("dense", "expert"):
        per = dense.grad_bytes_per_layer(m, group, 2)
        assert bufs[group].numel() * 4 == sum(per)
        assert [sum(p.numel() for p in (b.dense_params() if group == "dense" else b.expert_params())) * 4
                for b in mod.blocks] == per
