"""Routers (executor.routers, moesched.routers): against Hugging Face's routers where one
exists, against the paper formulas written out in plain torch otherwise, auxiliary losses and
the deepseek_v3 bias update against hand-computed values, and the model fields' checks."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from moesched.errors import MoeschedError
from moesched.models import MoEModel

from executor import routers
from executor.layers import LayerParams, MoEModule, ReferenceModel, make_batch
from executor.testplans import tiny_model

T, M, E = 24, 16, 8


def _setup(**kw):
    m = tiny_model(experts=E, **kw)
    p = LayerParams(m, 0, 1, 0, seed=3, device=torch.device("cpu"), dtype=torch.float32)
    u = torch.randn(T, M, generator=torch.Generator().manual_seed(5))
    return m, p, u


def _grad(fn, param: torch.Tensor) -> torch.Tensor:
    param.grad = None
    r = torch.linspace(-1, 1, T * fn().numel() // T).reshape(T, -1)
    (fn() * r).sum().backward()
    g = param.grad.clone()
    param.grad = None
    return g


@pytest.mark.parametrize("hf, norm", [("mixtral", True), ("qwen3", False), ("qwen3", True)])
def test_topk_softmax_equals_hugging_face(hf: str, norm: bool) -> None:
    m, p, u = _setup(top_k=2, norm_topk_prob=norm)
    if hf == "mixtral":
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter
        ref = MixtralTopKRouter(MixtralConfig(hidden_size=M, num_local_experts=E, num_experts_per_tok=2))
    else:
        from transformers import Qwen3MoeConfig
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter
        ref = Qwen3MoeTopKRouter(Qwen3MoeConfig(hidden_size=M, num_experts=E, num_experts_per_tok=2,
                                                norm_topk_prob=norm))
    ref.weight = p.wg
    out = routers.route(u, p, m)
    _, w_hf, idx_hf = ref(u)
    assert torch.equal(out.idx, idx_hf)
    assert torch.allclose(out.w, w_hf, atol=1e-7)
    assert torch.allclose(_grad(lambda: routers.route(u, p, m).w, p.wg), _grad(lambda: ref(u)[1], p.wg), atol=1e-6)


def test_switch_equals_hugging_face() -> None:
    from transformers import SwitchTransformersConfig
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersTop1Router
    m, p, u = _setup(top_k=1, router="switch")
    cfg = SwitchTransformersConfig(d_model=M, num_experts=E, expert_capacity=T, router_jitter_noise=0.0,
                                   router_dtype="float32", router_bias=False)
    ref = SwitchTransformersTop1Router(cfg)
    ref.classifier.weight = p.wg
    onehot, prob, _ = ref(u[None])
    out = routers.route(u, p, m)
    assert torch.equal(out.idx[:, 0], onehot[0].argmax(-1))
    assert torch.allclose(out.w, prob[0], atol=1e-7)
    assert (out.w < 1).all()  # the gate probability, not renormalised to 1
    assert torch.allclose(_grad(lambda: routers.route(u, p, m).w, p.wg), _grad(lambda: ref(u[None])[1][0], p.wg),
                          atol=1e-6)


def test_deepseek_v3_equals_hugging_face() -> None:
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
    m, p, u = _setup(top_k=2, router="deepseek_v3", router_groups=4, router_group_topk=2)
    cfg = DeepseekV3Config(hidden_size=M, n_routed_experts=E, num_experts_per_tok=2, n_group=4, topk_group=2,
                           norm_topk_prob=True, routed_scaling_factor=1.0)
    cfg.num_local_experts = E
    ref = DeepseekV3TopkRouter(cfg)
    ref.weight = p.wg
    bias = torch.randn(E, generator=torch.Generator().manual_seed(9)) * 0.3
    p.e_bias.copy_(bias)
    ref.e_score_correction_bias.copy_(bias)

    def hf_sorted():
        _, w, idx = ref(u)
        order = idx.argsort(-1)
        return w.gather(-1, order), idx.gather(-1, order)

    def ours_sorted():
        out = routers.route(u, p, m)
        order = out.idx.argsort(-1)
        return out.w.gather(-1, order), out.idx.gather(-1, order)

    (w1, i1), (w2, i2) = ours_sorted(), hf_sorted()
    assert torch.equal(i1, i2)
    assert torch.allclose(w1, w2, atol=1e-7)
    assert torch.allclose(_grad(lambda: ours_sorted()[0], p.wg), _grad(lambda: hf_sorted()[0], p.wg), atol=1e-6)
    # the groups: every token's experts lie in at most 2 of the 4 groups of 2
    assert all(len(set((i // 2).tolist())) <= 2 for i in i1)


def test_sigmoid_and_xmoe_follow_their_formulas() -> None:
    m, p, u = _setup(top_k=2, router="sigmoid")
    s = torch.sigmoid(u @ p.wg.t())
    w, idx = s.topk(2, dim=-1)
    out = routers.route(u, p, m)
    assert torch.equal(out.idx, idx) and torch.allclose(out.w, w / w.sum(-1, keepdim=True))
    m, p, u = _setup(top_k=2, router="xmoe", router_dim=4)
    assert p.wr.shape == (4, M) and p.wg.shape == (E, 4)
    z = u @ p.wr.t()
    cos = (z @ p.wg.t()) / (z.norm(dim=-1, keepdim=True) * p.wg.norm(dim=-1)[None, :])
    probs = torch.softmax(cos / 0.07, dim=-1)
    w, idx = probs.topk(2, dim=-1)
    out = routers.route(u, p, m)
    assert torch.equal(out.idx, idx) and torch.allclose(out.w, w / w.sum(-1, keepdim=True), atol=1e-6)
    out.w.sum().backward()
    assert p.tau.grad is not None and p.wr.grad.abs().sum() > 0


def test_expert_choice_picks_capacity_tokens_per_expert() -> None:
    m, p, u = _setup(top_k=2, router="expert_choice", capacity_factor=1.0)
    gate, chosen = routers.expert_choice(u, p, m)
    C = math.ceil(2 * T / E)
    assert chosen.sum(0).tolist() == [C] * E
    S = torch.softmax(u @ p.wg.t(), dim=-1)
    for e in range(E):  # expert e's chosen tokens are its C best by S[:, e]
        assert set(chosen[:, e].nonzero().flatten().tolist()) == set(S[:, e].topk(C).indices.tolist())
    assert torch.allclose(gate, S * chosen)


def test_aux_losses_equal_hugging_face_and_hand_values() -> None:
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    from transformers.models.switch_transformers.modeling_switch_transformers import router_z_loss_func
    m, p, u = _setup(top_k=2, aux_loss_coef=0.01, z_loss_coef=0.001)
    out = routers.route(u, p, m)
    lb = load_balancing_loss_func((out.logits,), E, 2)
    z = router_z_loss_func(out.logits[None])
    assert float(routers.aux_loss(out, m).detach()) == pytest.approx(float((0.01 * lb + 0.001 * z).detach()), rel=1e-6)
    # hand: 2 tokens, 2 experts, top-1; probs (0.75, 0.25) and (0.5, 0.5) -> argmax 0, 0
    probs = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    f_p = 2 * (1.0 * 0.625 + 0.0 * 0.375)
    assert float(routers.load_balancing_loss(probs, torch.tensor([[0], [0]]), 2)) == pytest.approx(f_p)
    x = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert float(routers.z_loss(x)) == pytest.approx((math.log(2) ** 2 + math.log(4) ** 2) / 2)


def test_piece_shares_sum_to_the_layer_loss() -> None:
    m, p, u = _setup(top_k=2, aux_loss_coef=0.1, z_loss_coef=0.01)
    out = routers.route(u, p, m)
    parts = [routers.piece_aux(routers.route(u[a:b], p, m), out.idx, m) for a, b in ((0, 8), (8, 20), (20, 24))]
    assert float(sum(parts).detach()) == pytest.approx(float(routers.aux_loss(out, m).detach()), rel=1e-6)


def test_bias_update_by_hand() -> None:
    b = torch.zeros(4)
    routers.update_bias(b, torch.tensor([3, 1, 2, 2]), 0.1)
    assert b.tolist() == pytest.approx([-0.1, 0.1, 0.0, 0.0])
    routers.update_bias(b, torch.tensor([0, 5, 1, 2]), 0.1)
    assert b.tolist() == pytest.approx([0.0, 0.0, 0.1, 0.0])  # mean 2: +, -, +, 0


def test_reference_model_bias_moves_against_load() -> None:
    m = tiny_model(router="deepseek_v3", router_groups=2, router_group_topk=1, bias_update_rate=0.05)
    ref = ReferenceModel(m, seed=1)
    xs, ts = zip(*(make_batch(m, r, 1) for r in range(2)))
    ref.loss(list(xs), list(ts))
    load = ref.step_load
    assert load.sum(1).tolist() == [2 * m.tokens * m.top_k] * m.layers
    ref.update_bias()
    for blk, ld in zip(ref.module.blocks, load):
        want = 0.05 * torch.sign(ld.float().mean() - ld.float())
        assert torch.equal(blk.e_bias, want)


@pytest.mark.parametrize("kw, msg", [
    (dict(router="switch", top_k=2), "top-1"),
    (dict(router="deepseek_v3", router_groups=3), "divide"),
    (dict(router="deepseek_v3", router_groups=4, router_group_topk=5), "router_group_topk"),
    (dict(router="deepseek_v3", router_groups=4, router_group_topk=1, top_k=3), "cannot hold"),
    (dict(router_groups=2), "deepseek_v3 only"),
    (dict(aux_loss_coef=-1.0), "aux_loss_coef"),
    (dict(z_loss_coef=float("nan")), "z_loss_coef"),
    (dict(router_dim=0), "router_dim"),
    (dict(router="top2"), "router must be one of"),
])
def test_bad_router_fields(kw: dict, msg: str) -> None:
    with pytest.raises(MoeschedError, match=msg):
        tiny_model(experts=8, **kw)


def test_fields_round_trip_and_param_counts() -> None:
    m = tiny_model(experts=8, router="xmoe", router_dim=4, aux_loss_coef=0.01)
    assert MoEModel.from_dict(m.to_dict()) == m
    assert "router_dim" not in tiny_model().to_dict()  # defaults stay out of the dict
    mod = MoEModule(m)
    dense = sum(p.numel() for p in mod.blocks[0].dense_params())
    assert dense == m.dense_params_per_layer()
    assert dataclasses.replace(m, router="topk_softmax").dense_params_per_layer() - dense == M * 8 - (4 * M + 8 * 4 + 1)


def test_reference_adds_aux_to_the_loss() -> None:
    m = tiny_model(aux_loss_coef=0.5, z_loss_coef=0.1)
    plain = dataclasses.replace(m, aux_loss_coef=0.0, z_loss_coef=0.0)
    x, t = make_batch(m, 0)
    a, b = ReferenceModel(m), ReferenceModel(plain)
    la, lb = a.rank_loss(x, t), b.rank_loss(x, t)
    assert float((la - lb).detach()) == pytest.approx(float(a.aux.detach())) and float(a.aux.detach()) > 0.5  # E sum f P >= ~k = 2
    la.backward()
    lb.backward()
    assert not torch.allclose(a.module.blocks[0].wg.grad, b.module.blocks[0].wg.grad)
