"""Executor pieces in one process: expert math, capacity, index bookkeeping, 2DH hop plans,
parameter counts, benchmark closures, order checks."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moesched import work
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.plan import Plan

from executor import tasks
from executor.profiling.bench import KINDS, make_bench
from executor.comm import hop_plan
from executor.ffn import experts_dw, experts_dx, experts_fwd, ffn_dw, ffn_dx, ffn_fwd
from executor.layers import MoEModule, keep_mask
from executor.state import LayerState, ranges
from executor.testplans import make_plan, random_order, tiny_model


@pytest.mark.parametrize("kind", ["gpt", "swiglu"])
def test_ffn_backward_matches_autograd(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    n, M, H = 7, 6, 5
    x = torch.randn(n, M, generator=g, dtype=torch.float64, requires_grad=True)
    w1, w3 = (torch.randn(H, M, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w2 = torch.randn(M, H, generator=g, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(n, M, generator=g, dtype=torch.float64)
    h = x @ w1.t()
    a = F.gelu(h) if kind == "gpt" else F.silu(h) * (x @ w3.t())
    (a @ w2.t()).backward(dy)
    with torch.no_grad():
        y, h1, h3 = ffn_fwd(x, w1, w2, w3, kind)
        torch.testing.assert_close(y, a @ w2.t())
        dx, g1, g3 = ffn_dx(dy, h1, h3, w1, w2, w3, kind)
        gw1, gw2, gw3 = torch.zeros_like(w1), torch.zeros_like(w2), torch.zeros_like(w3)
        ffn_dw(dy, x, h1, h3, g1, g3, gw1, gw2, gw3, kind)
    torch.testing.assert_close(dx, x.grad)
    torch.testing.assert_close(gw1, w1.grad)
    torch.testing.assert_close(gw2, w2.grad)
    if kind == "swiglu":
        torch.testing.assert_close(gw3, w3.grad)


def test_capacity_counters_match_unchunked() -> None:
    g = torch.Generator().manual_seed(1)
    idx = torch.stack([torch.randperm(6, generator=g)[:2] for _ in range(40)])
    whole = keep_mask(idx, 6, 9)
    assert not whole.all()  # some copies dropped
    counts = torch.zeros(6, dtype=torch.long)
    parts = [keep_mask(idx[a:a + 10], 6, 9, counts) for a in range(0, 40, 10)]
    assert torch.equal(torch.cat(parts), whole)
    assert counts.tolist() == torch.bincount(idx.reshape(-1), minlength=6).tolist()


def test_keep_mask_matches_definition() -> None:
    """Kept iff the copy's token-major rank among its expert's copies (plus earlier counts) < C."""
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 5, (60, 3), generator=g)
    counts = torch.tensor([0, 4, 1, 0, 7])
    expect, seen = [], counts.clone().tolist()
    for e in idx.reshape(-1).tolist():
        expect.append(seen[e] < 10)
        seen[e] += 1
    got = keep_mask(idx, 5, 10, counts)
    assert got.reshape(-1).tolist() == expect
    assert counts.tolist() == seen


@pytest.mark.parametrize("kind", ["gpt", "swiglu"])
def test_grouped_experts_match_loop(kind: str) -> None:
    """bf16 grouped GEMMs (torch._grouped_mm) give the per-expert loop's results, empty experts included."""
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch without _grouped_mm")
    g = torch.Generator().manual_seed(4)
    El, M, H, ne = 4, 16, 32, [5, 0, 7, 3]
    n = sum(ne)

    def r(*s: int) -> torch.Tensor:
        return (torch.randn(*s, generator=g) * 0.3).to(torch.bfloat16)
    x, dy, w1, w2 = r(n, M), r(n, M), r(El, H, M), r(El, M, H)
    w3 = r(El, H, M) if kind == "swiglu" else None
    offs = torch.tensor(ne).cumsum(0).to(torch.int32)
    res = {}
    for name, o in (("loop", None), ("grouped", offs)):
        y, h1, h3 = experts_fwd(x, ne, o, w1, w2, w3, kind)
        dx, g1, g3 = experts_dx(dy, h1, h3, ne, o, w1, w2, w3, kind)
        gw = [torch.zeros_like(w) if w is not None else None for w in (w1, w2, w3)]
        experts_dw(dy, x, h1, h3, g1, g3, ne, o, *gw, kind)
        res[name] = [y, dx] + [t for t in gw if t is not None]
    for a, b in zip(res["loop"], res["grouped"]):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)
    assert res["grouped"][2][1].abs().max() == 0   # expert 1 received no rows: no gradient


def test_ranges() -> None:
    assert ranges(np.array([5, 0, 9]), np.array([2, 0, 3])).tolist() == [5, 6, 9, 10, 11]
    assert ranges(np.array([[3, 7]]), np.array([[0, 2]])).dtype == np.int64


def _simulate_2dh(R: torch.Tensor, G: int, forward: bool) -> None:
    """Move labelled rows through both hops and compare with the flat all-to-all."""
    S = R.shape[0]
    send = [[(s, d, i) for d in range(S) for i in range(int(R[s, d]))] for s in range(S)]
    flat = [[row for s in range(S) for row in send[s] if row[1] == d] for d in range(S)]
    hops = ("intra", "inter") if forward else ("inter", "intra")
    bufs = send
    for h, hop in enumerate(hops):
        plans = [hop_plan(R, me, G, hop, forward) for me in range(S)]
        peers = (lambda me: [me // G * G + j for j in range(G)]) if hop == "intra" else \
            (lambda me: [me % G + n * G for n in range(S // G)])
        outs = []
        for me in range(S):
            gathered = []
            for src in peers(me):
                idx, ss, _, _ = plans[src]
                rows = bufs[src] if idx is None else [bufs[src][i] for i in idx.tolist()]
                pos = peers(src).index(me)
                off = sum(ss[:pos])
                gathered += rows[off:off + ss[pos]]
            assert len(gathered) == sum(plans[me][2])
            outs.append(gathered)
        bufs = outs
    for me in range(S):
        pos = plans[me][3]
        got = bufs[me]
        if pos is not None:
            reordered = [None] * len(got)
            for i, p in enumerate(pos.tolist()):
                reordered[p] = got[i]
            got = reordered
        assert got == flat[me]


@pytest.mark.parametrize("forward", [True, False])
@pytest.mark.parametrize("nodes,G", [(2, 2), (3, 2), (2, 3)])
def test_two_hop_all_to_all_equals_flat(forward: bool, nodes: int, G: int) -> None:
    g = torch.Generator().manual_seed(nodes * 10 + G)
    R = torch.randint(0, 4, (nodes * G, nodes * G), generator=g).numpy()
    _simulate_2dh(R, G, forward)


def test_expert_bwd_order_matches_owner_order() -> None:
    """Expert-side backward rows, in message order, are the forward rows of token range j
    grouped by (source, expert) and sorted by token: what the owner sends."""
    S, El, rf, rb, T, k = 2, 2, 2, 4, 16, 2
    ls = LayerState(T, 4, k, S * El, S, rf, rb, torch.device("cpu"), torch.float32, 0)
    g = torch.Generator().manual_seed(3)
    labels = []  # per fwd chunk: rows in message order (s, e, j) labels
    for c in range(rf):
        cnt = torch.randint(0, 3, (S, S, El, rb), generator=g)
        for jj in range(rb):  # only backward chunks inside forward chunk c may be nonzero
            if not (c * T // rf <= jj * T // rb < (c + 1) * T // rf):
                cnt[..., jj] = 0
        ls.cnt[c] = cnt.numpy()   # host counts are numpy
        ls.ech[c] = ls.expert_chunk(c, 0)
        mine = cnt[:, 0]
        labels.append([(s, e, jj) for s in range(S) for e in range(El) for jj in range(rb)
                       for _ in range(int(mine[s, e, jj]))])
    gemm = [lab for c in range(rf) for lab in [labels[c][i] for i in ls.ech[c].perm.tolist()]]
    for j in range(rb):
        eb = ls.expert_bwd(j)
        rows = [gemm[i] for i in eb.sel.tolist()]
        assert all(r[2] == j for r in rows)
        msg = [None] * len(rows)
        for i, p in enumerate(eb.perm.tolist()):
            msg[p] = rows[i]
        assert msg == sorted(msg, key=lambda r: (r[0], r[1]))
        assert eb.recv_split == [sum(1 for r in msg if r[0] == s) for s in range(S)]
        assert eb.ne == [sum(1 for r in rows if r[1] == e) for e in range(El)]


@pytest.mark.parametrize("shared,kind", [(0, "gpt"), (2, "swiglu")])
def test_parameter_counts_match_the_model(shared: int, kind: str) -> None:
    m = tiny_model(shared_experts=shared, expert_kind=kind, layers=3)
    mod = MoEModule(m, ep=2, ep_rank=1)
    blk = mod.blocks[0]
    assert sum(p.numel() for p in blk.dense_params()) == m.dense_params_per_layer()
    assert sum(p.numel() for p in blk.expert_params()) == (m.experts // 2) * m.expert_params()
    flat = tasks.grad_buffers(mod)
    assert flat["dense"].numel() * flat["dense"].element_size() == work.dense_grad_bytes(m) * m.layers
    assert flat["expert"].numel() * 4 == work.expert_grad_bytes(m, 2) * m.layers
    # last layer first
    assert mod.blocks[-1].norm1.grad.data_ptr() == flat["dense"].data_ptr()


def test_experts_are_sharded_consistently() -> None:
    m = tiny_model()
    full = MoEModule(m, ep=1)
    half = MoEModule(m, ep=2, ep_rank=1)
    assert torch.equal(half.blocks[1].w1, full.blocks[1].w1[2:])
    assert torch.equal(half.blocks[1].wqkv, full.blocks[1].wqkv)


@pytest.mark.parametrize("kind", KINDS)
def test_bench_closures_run(kind: str) -> None:
    m = tiny_model(shared_experts=1, expert_kind="swiglu", capacity_factor=1.0)
    fn = make_bench(kind, m, 16, "cpu", torch.float32, ep=2)
    fn()
    fn()


def test_attn_bwd_bench_scatters_the_returned_input_gradients() -> None:
    """As in a real step, attn_bwd adds the input gradients its combine_bwd rows came back
    with (one row per kept copy): the benchmark must time that scatter-add too."""
    m = tiny_model(capacity_factor=1.0)
    fn = make_bench("attn_bwd", m, 16, "cpu", torch.float32, ep=2)
    l1 = fn.ctx.layers[1]
    assert l1.dxr[0] is not None and l1.dxr[0].shape == (l1.bci[0].numel(), l1.M)
    assert 0 < l1.bci[0].numel() <= 16 * m.top_k
    params = [p for p in fn.ctx.module.blocks[1].parameters() if p.requires_grad]

    def grads() -> list[torch.Tensor]:
        for p in params:
            p.grad = None
        fn()
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
    with_rows, again = grads(), grads()
    assert all(torch.equal(a, b) for a, b in zip(with_rows, again))
    l1.dxr[0].zero_()
    assert any(not torch.allclose(a, b) for a, b in zip(with_rows, grads()))  # the rows reach du


def test_bench_signature_with_device_object() -> None:
    m = tiny_model()
    make_bench("expert_dx", m, 8, torch.device("cpu"), torch.float32)()


def test_capacity_chunks_are_ordered_by_the_graph() -> None:
    """Token-major capacity ranking needs a layer's attention chunks in order: the graph
    chains them, so a plan that swaps them is refused at validation."""
    m = tiny_model(capacity_factor=1.0)
    c, k = Cluster(1, 2), Knobs((2, 2), (1, 1), at_chunked=True)
    p = make_plan(m, c, k)
    assert p.graph().has_edge("L0.F.attn_fwd.c0", "L0.F.attn_fwd.c1")
    order = list(p.order)
    i, j = order.index("L0.F.attn_fwd.c0"), order.index("L0.F.attn_fwd.c1")
    order[i], order[j] = order[j], order[i]
    with pytest.raises(MoeschedError, match="before its dependency"):
        Plan("t", m, c, k, order).validate()


def test_random_order_is_topological() -> None:
    p = make_plan(tiny_model(), Cluster(1, 2), Knobs((2, 1), (4, 2)))
    g = p.graph()
    for seed in range(3):
        Plan("t", p.model, p.cluster, p.knobs, random_order(g, random.Random(seed))).validate()


def test_model_dtype_maps() -> None:
    m = MoEModel(name="b", layers=1, d_model=8, heads=2, seq_len=4, micro_batch=1, ffn_hidden=8, experts=2,
                 top_k=1)
    assert MoEModule(m).dtype == torch.bfloat16


def test_random_plans_are_valid_and_executable_orders() -> None:
    """random_plan yields valid plans, also with serialize + capacity + chunked attention."""
    from executor.testplans import random_plan
    rng = random.Random(0)
    for i in range(40):
        p = random_plan(rng, [Cluster(1, 2), Cluster(2, 2), Cluster(1, 4, ep=2)][i % 3])
        p.validate()
    p = make_plan(tiny_model(capacity_factor=1.0), Cluster(1, 2), Knobs((2, 4), (1, 2), at_chunked=True,
                                                                           serialize=True), random.Random(1))
    p.validate()


def test_link_groups_ask_for_high_priority_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL link groups get a high-priority internal stream (a misspelt option attribute once
    went unnoticed: pybind options reject unknown names, and the error was swallowed)."""
    import torch.distributed as dist

    from executor.comm import link_pg_options

    class Options:
        __slots__ = ("is_high_priority_stream",)

    class FakeNCCL:
        pass
    FakeNCCL.Options = Options
    monkeypatch.setattr(dist, "ProcessGroupNCCL", FakeNCCL, raising=False)
    opts = link_pg_options("nccl", "comm_a2a")
    assert isinstance(opts, Options) and opts.is_high_priority_stream is True
    assert link_pg_options("gloo", "comm_a2a") is None and link_pg_options("nccl", "compute") is None


def test_cuda_graphs_default_on_for_cuda_only(monkeypatch) -> None:
    """Graphs of the attention block are the CUDA default; MOESCHED_CUDA_GRAPHS=0 turns them
    off; CPU never graphs (and capture() returns None there without touching CUDA)."""
    from executor import graphs
    monkeypatch.delenv("MOESCHED_CUDA_GRAPHS", raising=False)
    assert graphs.enabled(torch.device("cuda", 0))
    assert not graphs.enabled(torch.device("cpu"))
    monkeypatch.setenv("MOESCHED_CUDA_GRAPHS", "0")
    assert not graphs.enabled(torch.device("cuda", 0))
    monkeypatch.setenv("MOESCHED_CUDA_GRAPHS", "1")
    assert graphs.enabled(torch.device("cuda", 0))
    m = tiny_model()
    module = MoEModule(m, ep=1, ep_rank=0, seed=0)
    k = Knobs.uniform(m.layers, 2, 2)
    layers = tasks.new_layer_states(m, k, 1, module.device, module.dtype)
    assert graphs.capture(module, k, layers) is None
    from executor import route
    assert route.capture(layers, m, k) is None


def test_a_failed_graph_capture_falls_back_with_one_warning(monkeypatch) -> None:
    """capture_or_none returns what its build returns; a build that raises gives None and one
    RuntimeWarning naming what failed; the garbage collector is on again either way."""
    import gc
    import warnings
    from executor import graphs
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)  # no GPU here
    assert graphs.capture_or_none(torch.device("cuda", 0), "x", lambda: 7) == 7 and gc.isenabled()

    def boom():
        assert not gc.isenabled()  # no collection inside a capture
        raise RuntimeError("operation not permitted when stream is capturing")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert graphs.capture_or_none(torch.device("cuda", 0), "the routing bookkeeping", boom) is None
    assert len(w) == 1 and "routing bookkeeping failed" in str(w[0].message) and gc.isenabled()
