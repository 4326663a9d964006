"""The memory model (moesched.memory): terms, ZeRO sharding, refusals naming the binding
term, which presets fit which clusters, and the model-state terms against the tensors the
executor really allocates."""
from __future__ import annotations

import pytest

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.memory import (GB, RankMemory, check_memory, fits_nowhere, gpu_memory_bytes, memory_problem,
                             rank_memory)
from moesched.models import PRESETS, MoEModel

H200 = 141 * 10**9
TINY = MoEModel(name="tiny", layers=2, d_model=32, heads=4, seq_len=8, micro_batch=2, ffn_hidden=48, experts=4,
                top_k=2, expert_kind="swiglu", shared_experts=1, dtype="fp32")


def test_terms_shard_as_stated() -> None:
    m = PRESETS["Mixtral-8x7B"]
    dense = m.layers * m.dense_params_per_layer() + m.embedding_params()  # embeddings replicated, as dense
    expert = m.layers * m.experts * m.expert_params()
    c = Cluster(4, 8, ep=8)
    z0, z1, z2 = (rank_memory(m, c, z) for z in (0, 1, 2))
    per_rank = dense + expert // 8
    assert z0.params_bytes == z0.grads_bytes == 2 * per_rank          # bf16 weights and gradients
    assert z0.optimizer_bytes == 12 * per_rank                        # ZeRO K = 12 (fp32 master + 2 moments)
    sharded = dense / 32 + (expert // 8) / 4                          # dense over the world, experts over expert-DP
    assert z1.optimizer_bytes == int(12 * sharded) and z1.grads_bytes == z0.grads_bytes
    assert z2.grads_bytes == int(2 * sharded) and z2.optimizer_bytes == z1.optimizer_bytes
    assert z0.activations_bytes == z2.activations_bytes > 0 and z0.a2a_bytes > 0
    assert z0.total_bytes > z1.total_bytes > z2.total_bytes
    fp32 = rank_memory(PRESETS["LLaMA2-MoE"], Cluster(1, 4), 0)
    assert fp32.optimizer_bytes == 2 * fp32.params_bytes              # fp32: two moments, no master copy


def test_activations_scale_with_tokens_not_experts_per_rank() -> None:
    m = PRESETS["Qwen3-30B-A3B"]
    a = rank_memory(m, Cluster(1, 4), 0)
    b = rank_memory(m, Cluster(8, 8), 0)
    assert a.activations_bytes == b.activations_bytes and a.params_bytes > b.params_bytes
    two = rank_memory(MoEModel.from_name("Qwen3-30B-A3B", micro_batch=2), Cluster(1, 4), 0)
    assert 1.99 < two.activations_bytes / a.activations_bytes <= 2.0


def test_mixtral_8x22b_refused_on_1x4_naming_the_binding_term() -> None:
    m = PRESETS["Mixtral-8x22B"]
    with pytest.raises(MoeschedError) as e:
        check_memory(m, Cluster(1, 4), H200)
    msg = str(e.value)
    assert "\n" not in msg and "binding term optimizer state" in msg and "Mixtral-8x22B" in msg
    # params + activations + all-to-all buffers alone exceed one H200 even at EP 8 on any
    # number of nodes with ZeRO-2: the refusal says so instead of suggesting more nodes.
    assert fits_nowhere(m, H200, 2) is not None and "moesched layouts" in fits_nowhere(m, H200, 2)


def test_mixtral_8x7b_needs_zero_and_nodes() -> None:
    m = PRESETS["Mixtral-8x7B"]
    with pytest.raises(MoeschedError, match="with --zero 1 it fits on enough nodes"):
        check_memory(m, Cluster(4, 8, ep=8), H200, 0)
    with pytest.raises(MoeschedError, match=r"does not fit 1x4/ep4 .*binding term optimizer state.*; try more nodes$"):
        check_memory(m, Cluster(1, 4, ep=4), H200, 1)
    with pytest.raises(MoeschedError, match=r"; try a larger EP or more nodes$"):
        check_memory(m, Cluster(1, 8, ep=4), H200, 1)
    check_memory(m, Cluster(4, 8, ep=8), H200, 1)                    # fits: 4x8, EP 8, ZeRO-1
    check_memory(m, Cluster(2, 8, ep=8), H200, 2)


def test_problem_names_largest_term() -> None:
    mem = RankMemory(1, 2, 30, 4, 5)
    assert mem.binding() == ("optimizer state", 30) and mem.total_bytes == 42
    assert memory_problem(TINY, Cluster(1, 2), 10**12) is None
    why = memory_problem(PRESETS["DeepSeek-V2-Lite"], Cluster(1, 4), 50 * GB)
    assert why is not None and "binding term optimizer state" in why


def test_zero_stage_checked() -> None:
    with pytest.raises(MoeschedError, match="ZeRO stage"):
        rank_memory(TINY, Cluster(1, 2), 3)


def test_gpu_memory_from_profile_else_gpu_name() -> None:
    assert gpu_memory_bytes({"gpu": "NVIDIA H200", "gpu_memory_bytes": 150109880320}) == 150109880320
    assert gpu_memory_bytes({"gpu": "NVIDIA H100 80GB HBM3"}) == 80 * 10**9
    with pytest.raises(MoeschedError, match="gpu_memory_bytes"):
        gpu_memory_bytes({"gpu": "mystery"})


# Which presets fit which H200 clusters (best EP, ZeRO-1): the table of the memory model.
FITS = {"GPT2-Tiny-MoE": "1x4", "BERT-Large-MoE": "1x4", "LLaMA2-MoE": "1x4", "DeepSeek-V2-S": "1x4",
        "GPT2-XL-MoE": "1x4", "Mixtral-7B-FSMoE": "1x4", "DeepSeek-V2-Lite": "1x4", "Mixtral-8x7B": "2x8",
        "Qwen3-30B-A3B": "1x8", "Mixtral-8x22B": None}


@pytest.mark.parametrize("name", list(PRESETS))
def test_smallest_cluster_each_preset_fits(name: str) -> None:
    m = PRESETS[name]
    first = None
    for text in ("1x4", "1x8", "2x8", "4x8", "8x8"):
        c = Cluster.parse(text)
        eps = [d for d in range(1, c.world + 1) if c.world % d == 0 and m.experts % d == 0]
        if any(memory_problem(m, Cluster(c.nodes, c.gpus_per_node, ep), H200, 1) is None for ep in eps):
            first = text
            break
    assert first == FITS[name]


def test_model_states_equal_executor_tensors() -> None:
    """Parameters, flat gradient buffers and Adam's state (fp32: two moments) of the
    executor's MoEModule, byte for byte, on every EP rank."""
    torch = pytest.importorskip("torch")
    from executor.layers import MoEModule, grad_buffers
    for ep in (1, 2, 4):
        c = Cluster(1, 4, ep=ep)
        mem = rank_memory(TINY, c, 0)
        mod = MoEModule(TINY, ep=ep, ep_rank=ep - 1)
        params = list(mod.parameters())
        assert sum(p.numel() * p.element_size() for p in params) == mem.params_bytes
        flat = grad_buffers(mod)
        assert sum(f.numel() * f.element_size() for f in flat.values()) == mem.grads_bytes
        opt = torch.optim.Adam(params, lr=1e-3)
        for f in flat.values():
            f.fill_(1e-3)
        opt.step()
        state = sum(t.numel() * t.element_size() for s in opt.state.values()
                    for k, t in s.items() if k != "step")
        assert state == mem.optimizer_bytes
