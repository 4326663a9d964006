"""Against an implementation no one here wrote: tiny random Mixtral and Qwen3-MoE models
made locally with ``transformers`` (config classes, no download), saved as safetensors,
load into the executor; logits, loss and one step's gradients equal transformers' on gloo
with 1 and 2 processes (EP = 2). Also: ``MoEModel.from_hf_config`` fields and refusals."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from localhost import free_port
from test_executor_exact import torchrun

from moesched.errors import MoeschedError
from moesched.models import MoEModel

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

COMMON = dict(vocab_size=53, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              num_experts_per_tok=2, max_position_embeddings=64)


def mixtral():
    c = transformers.MixtralConfig(**COMMON, intermediate_size=24, num_local_experts=4, rope_theta=1e4,
                                   rms_norm_eps=1e-5)
    return transformers.MixtralForCausalLM(c)


def qwen3():
    c = transformers.Qwen3MoeConfig(**COMMON, intermediate_size=40, moe_intermediate_size=24, head_dim=12,
                                    num_experts=4, norm_topk_prob=False, tie_word_embeddings=True)
    return transformers.Qwen3MoeForCausalLM(c)


def reference(model, tmp, rows=4, L=8) -> None:
    """Random weights (norms near 1), save as safetensors; transformers' logits, loss and
    gradients of one batch into ref.pt and grads.safetensors."""
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in n else 0.2 * torch.randn_like(p))
    model.save_pretrained(tmp / "ckpt")
    V = model.config.vocab_size
    t = torch.randint(0, V, (rows, L + 1))
    tokens, targets = t[:, :-1].contiguous(), t[:, 1:].contiguous()
    logits = model(input_ids=tokens).logits
    loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
    loss.backward()
    torch.save({"tokens": tokens, "targets": targets, "logits": logits.detach(), "loss": loss.detach()}, tmp / "ref.pt")
    safetensors_torch.save_file({n: p.grad.contiguous() for n, p in model.named_parameters()},
                                str(tmp / "grads.safetensors"))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Folders of the Mixtral and Qwen3-MoE cases (checkpoint, reference outputs)."""
    out = []
    for name, make in (("mixtral", mixtral), ("qwen3", qwen3)):
        d = tmp_path_factory.mktemp(name)
        reference(make(), d)
        out.append(d)
    return out


@pytest.mark.parametrize("nproc", [1, 2])
def test_hf_model_equals_transformers(tmp_path, cases, nproc):
    out = tmp_path / "r.jsonl"
    args = [a for d in cases for a in ("--case", str(d))] + ["--out", str(out)]
    r = torchrun(nproc, "executor.hfcheck", args, free_port())
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    res = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["case"] for x in res] == [d.name for d in cases] and len(res) == 2
    for x in res:
        assert x["ok"], x
        assert x["logits_err"] < 1e-4 and x["grad_err"] < 1e-4, x


def test_from_hf_config_fields(tmp_path):
    mixtral().config.save_pretrained(tmp_path / "m")
    m = MoEModel.from_hf_config(tmp_path / "m", seq_len=16, dtype="fp32")
    assert (m.layers, m.d_model, m.heads, m.kv_heads, m.ffn_hidden, m.experts, m.top_k) == (2, 32, 4, 2, 24, 4, 2)
    assert (m.rope_theta, m.norm_eps, m.norm_topk_prob, m.qk_norm, m.vocab_size) == (1e4, 1e-5, True, False, 53)
    q = MoEModel.from_hf_config(qwen3().config.to_dict())
    assert (q.head_dim, q.qk_norm, q.norm_topk_prob, q.tie_embeddings, q.ffn_hidden) == (12, True, False, True, 24)
    assert MoEModel.from_dict(q.to_dict()) == q


@pytest.mark.parametrize("change, words", [
    ({"model_type": "deepseek_v3"}, "multi-head latent attention"),
    ({"model_type": "qwen2_moe"}, "gated shared expert"),
    ({"model_type": "llama"}, "not supported; supported: mixtral, qwen3_moe"),
    ({"sliding_window": 4096}, "sliding-window"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "'yarn'"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": "big"}}, "rope_theta must be a finite number"),
    ({"rms_norm_eps": "1e-5"}, "rms_norm_eps must be a finite number"),
    ({"rms_norm_eps": [1e-5]}, "rms_norm_eps must be a finite number"),
    ({"num_hidden_layers": "32"}, "num_hidden_layers must be an integer"),
    ({"num_hidden_layers": 10**12}, "num_hidden_layers must be an integer"),
    ({"hidden_size": 10**30}, "d_model must be a positive integer at most"),
])
def test_from_hf_config_refuses(change, words):
    d = {**mixtral().config.to_dict(), **change}
    with pytest.raises(MoeschedError, match=words):
        MoEModel.from_hf_config(d)


def test_cli_model_takes_a_hf_config(tmp_path, capsys):
    from moesched.cli import main
    mixtral().config.save_pretrained(tmp_path / "m")
    out = tmp_path / "plan.json"
    assert main(["solve", "--model", str(tmp_path / "m" / "config.json"), "--profile", "cpu-gloo-2",
                 "--out", str(out), "--time-limit", "2"]) == 0
    plan = json.loads(out.read_text())
    assert plan["model"]["kv_heads"] == 2 and plan["model"]["vocab_size"] == 53
    assert main(["solve", "--model", str(tmp_path / "missing.json"), "--profile", "cpu-gloo-2",
                 "--out", str(tmp_path / "p2.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moesched: error: cannot read Hugging Face config")
    config = tmp_path / "m" / "config.json"
    before = config.read_bytes()
    for argv in (["solve", "--out", str(config), "--time-limit", "2"], ["simulate", "--trace", str(config)]):
        assert main([argv[0], "--model", str(config), "--profile", "cpu-gloo-2", *argv[1:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is the same file as --model" in err[0]
    assert config.read_bytes() == before
