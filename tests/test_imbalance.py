"""Plans priced under uneven routing (moesched.imbalance, moesched.imbalance_plans) and the
--routing flag of simulate and solve."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.imbalance import expected, load_source, sample_steps, step_load
from moesched.imbalance_plans import best, policy_plans, rank_plans, sampled_loads
from moesched.knobs import Knobs
from moesched.models import PRESETS
from moesched.ops import GroupedGemm, Gemm, uneven_expert_ops
from moesched.profile import Profile
from moesched.routing_trace import LayerRouting, RoutingTrace, TraceHeader

NVLINK = Profile.load("analytic-h200x4-nvlink")
MODEL = dataclasses.replace(PRESETS["GPT2-XL-MoE"], layers=2, capacity_factor=None)
CLUSTER = Cluster(1, 4)


def _trace(rows: list[list[int]], ep: int = 2, tokens: int = 8, layers: int = 1, experts: int = 4) -> RoutingTrace:
    h = TraceHeader(layers=layers, experts=experts, ep=ep, tokens_per_rank=tokens, top_k=2)
    return RoutingTrace(h, tuple(LayerRouting.from_lists(0, l, rows) for l in range(layers)))


def test_step_load_scales_splits_and_caps() -> None:
    m = dataclasses.replace(MODEL, experts=4, top_k=2, micro_batch=1, seq_len=16, layers=2, capacity_factor=None)
    # trace: EP 2, 8 tokens x top-2 per rank; model: EP 4, 16 tokens x top-2 = 32 copies per rank
    t = _trace([[8, 4, 2, 2], [0, 8, 4, 4]])
    sl = step_load(t, 0, m, 4)            # each trace row splits into 2 sources of 2x its half
    assert sl.dropped == 0
    rows = sl.routing.copies[0]
    assert [sum(r) for r in rows] == [32, 32, 32, 32]
    # expert loads scale by 32 / (16 / 2) = 4: [8, 12, 6, 6] -> [32, 48, 24, 24], one expert per rank
    assert [sum(col) for col in zip(*rows)] == [32, 48, 24, 24]
    assert sl.groups[1] == ((32,), (48,), (24,), (24,))  # layer 1 replays trace layer 0 (2 = 2 x 1 layers)
    # C = ceil(2*16/4) = 8 per source and expert: sources [16,8,4,4] x 2 and [0,16,8,8] x 2 keep
    # [8,8,4,4] x 2 and [0,8,8,8] x 2
    capped = step_load(t, 0, dataclasses.replace(m, capacity_factor=1.0), 4)
    assert capped.groups[0] == ((16,), (32,), (24,), (24,))
    assert capped.dropped == 2 * (128 - 96)  # two layers
    merged = step_load(_trace([[8, 4, 2, 2], [0, 8, 4, 4]]), 0, dataclasses.replace(m, layers=1), 1)
    assert merged.groups[0] == ((8, 12, 6, 6),)  # both rows summed: 32 copies = the model's T*k


@pytest.mark.parametrize("kw, msg", [(dict(experts=8, layers=2), "a trace of this model is needed"),
                                     (dict(experts=4, layers=3), "multiple")])
def test_a_trace_of_another_shape_is_refused(kw: dict, msg: str) -> None:
    m = dataclasses.replace(MODEL, top_k=2, micro_batch=1, seq_len=16, **kw)
    with pytest.raises(MoeschedError, match=msg):
        step_load(_trace([[8, 4, 2, 2], [0, 8, 4, 4]], layers=2), 0, m, 2)


def _vanilla(m=MODEL):
    k = Knobs.uniform(m.layers, 2)
    from moesched.graph import build
    from moesched.sim import simulate
    return k, simulate(build(m, CLUSTER, NVLINK, k)).order()


def test_even_routing_changes_nothing_and_skew_costs_time() -> None:
    k, order = _vanilla()
    even = [step_load(load_source("even", MODEL, CLUSTER, 2), s, MODEL, 4) for s in (0, 1)]
    e = expected(MODEL, CLUSTER, NVLINK, k, order, even)
    assert e.mean_us == pytest.approx(e.even_us, rel=1e-9) and e.dropped == 0
    z = sampled_loads("zipf:1.2,drift=0.2", MODEL, CLUSTER, 4)
    ez = expected(MODEL, CLUSTER, NVLINK, k, order, z)
    assert ez.mean_us > 1.2 * ez.even_us and ez.p90_us >= ez.mean_us and ez.dropped == 0
    capped = dataclasses.replace(MODEL, capacity_factor=1.0)
    kc, oc = _vanilla(capped)
    ec = expected(capped, CLUSTER, NVLINK, kc, oc, sampled_loads("zipf:1.2", capped, CLUSTER, 2))
    assert ec.dropped > 0 and ec.mean_us < ez.mean_us  # capacity bounds the busiest rank


def test_sample_steps_spread() -> None:
    t = load_source("zipf:1,drift=0.1", MODEL, CLUSTER, 20)
    assert sample_steps(t, 4) == [0, 6, 13, 19]
    assert sample_steps(t, 50) == list(range(20))


def test_plan_for_the_distribution_never_loses_to_the_even_plan() -> None:
    m = dataclasses.replace(PRESETS["Mixtral-8x7B"], layers=2)
    plans = policy_plans(m, CLUSTER, NVLINK)
    assert len(plans) >= 5
    for spec in ("zipf:1.0", "zipf:1.5,drift=0.3"):
        cands = rank_plans(m, CLUSTER, NVLINK, plans, sampled_loads(spec, m, CLUSTER, 3))
        chosen = best(cands)
        assert all(chosen.result.mean_us <= c.result.mean_us for c in cands)
        assert all(c.result.mean_us > c.result.even_us for c in cands)


def test_uneven_expert_ops() -> None:
    m = dataclasses.replace(MODEL, expert_kind="swiglu", dtype="fp32")
    loop = uneven_expert_ops("expert_fwd", m, [10, 0, 30, 5], grouped=False)
    gemms = [o for o in loop if isinstance(o, Gemm)]
    assert [g.m for g in gemms] == [10, 10, 10, 30, 30, 30, 5, 5, 5]  # three GEMMs per non-empty expert
    assert sum(g.flops for g in gemms) == pytest.approx(2 * 3 * 45 * m.d_model * m.ffn_hidden)
    G, rows, skew = 4, 100.0, 0.6
    spread = [rows * (1 + skew * (2 * g / (G - 1) - 1)) for g in range(G)]
    grouped = [o for o in uneven_expert_ops("expert_dw", m, [round(x) for x in spread], grouped=True)
               if isinstance(o, GroupedGemm)]
    assert grouped and all(o.groups == 4 and o.rows == 100 and o.skew == pytest.approx(0.6, abs=1e-6)
                           for o in grouped)
    even = [o for o in uneven_expert_ops("expert_dx", m, [25] * 4, grouped=True) if isinstance(o, GroupedGemm)]
    assert all(o.skew == 0 for o in even)


def test_cli_simulate_and_solve_under_routing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from moesched.cli import main
    from moesched.plan import Plan
    assert main(["simulate", "--model", "GPT2-Tiny-MoE", "--profile", "analytic-h200x4-nvlink",
                 "--schedules", "vanilla,fsmoe", "--routing", "zipf:1.2", "--routing-samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "under routing zipf:1.2 (2 sampled steps" in out and "fsmoe" in out.split("under routing")[1]
    plan = tmp_path / "p.json"
    assert main(["solve", "--model", "GPT2-Tiny-MoE", "--layers", "2", "--profile", "analytic-h200x4-nvlink",
                 "--routing", "zipf:1.5", "--routing-samples", "2", "--out", str(plan), "--time-limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "chosen for the distribution" in out
    Plan.load(plan).validate()


@pytest.mark.parametrize("cmd", ["simulate", "solve"])
@pytest.mark.parametrize("spec, msg", [("zipf:x", "not a trace file"), ("nofile.jsonl", "not a trace file"),
                                       ("routing/bytelm-L4-E8-top2.jsonl", "a trace of this model is needed"),
                                       ("zipf:1 --routing-samples 0", "--routing-samples")])
def test_cli_refuses_a_bad_routing_before_work(cmd: str, spec: str, msg: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    from moesched.cli import main
    root = Path(__file__).resolve().parent.parent
    spec = str(root / spec) if spec.startswith("routing/") else spec
    extra = ["--out", str(tmp_path / "p.json")] if cmd == "solve" else ["--schedules", "vanilla"]
    assert main([cmd, "--model", "GPT2-Tiny-MoE", "--profile", "analytic-h200x4-nvlink", *extra,
                 "--routing", *spec.split()]) == 2
    cap = capsys.readouterr()
    assert cap.err.startswith("moesched: error:") and msg in cap.err and cap.err.count("\n") == 1
    assert "step" not in cap.out and not (tmp_path / "p.json").exists()


def test_knob_variants_keep_the_rest_of_the_schedule() -> None:
    from moesched.imbalance_plans import knob_variants, policy_schedules
    m = dataclasses.replace(PRESETS["Mixtral-8x7B"], layers=2)
    base = policy_schedules(m, CLUSTER, NVLINK, ["fsmoe"])["fsmoe"]
    vs = knob_variants(base)
    assert len(vs) == 16 and "fsmoe r_fwd=2 r_bwd=8" in vs
    v = vs["fsmoe r_fwd=2 r_bwd=8"]
    assert v.knobs.r_fwd == (2, 2) and v.knobs.r_bwd == (8, 8) and v.priority is base.priority
    assert dataclasses.replace(v.knobs, r_fwd=base.knobs.r_fwd, r_bwd=base.knobs.r_bwd) == base.knobs


def test_hierarchical_hops_follow_each_ranks_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from moesched.imbalance import hop_shares, step_timeline
    # 2 nodes x 2 GPUs; EP rank q = (q // 2, q % 2); even: every rank sends 4 copies to every rank (16 each)
    m = ((4, 4, 4, 4),) * 4
    assert hop_shares(m, 2, 16.0) == {"intra": [1.0] * 4, "inter": [1.0] * 4}
    # every rank sends all 16 copies to rank 3 = (node 1, local 1)
    hot = ((0, 0, 0, 16),) * 4
    sh = hop_shares(hot, 2, 16.0)
    # intra: ranks of local index 1 collect their node's 32 rows for local index 1; inter: rank 3 receives 64
    assert sh["intra"] == [1.0, 2.0, 1.0, 2.0] and sh["inter"] == [0.0, 2.0, 0.0, 4.0]
    c, prof = Cluster(2, 2), Profile.load("analytic-h200x4-2nodes")
    m2 = dataclasses.replace(MODEL, layers=1)
    k = Knobs((1,), (1,), a2a="hierarchical", serialize=True)  # every hop on the critical path
    from moesched.graph import build
    from moesched.sim import simulate
    order = simulate(build(m2, c, prof, k)).order()
    assert any(t.endswith(".inter") for t in order)
    even = step_load(load_source("even", m2, c, 1), 0, m2, 4)
    skew = step_load(load_source("zipf:1.5", m2, c, 1), 0, m2, 4)
    base = simulate(build(m2, c, prof, k), {t: i for i, t in enumerate(order)}, strict=True).makespan_us
    assert step_timeline(m2, c, prof, k, order, even).makespan_us == pytest.approx(base, rel=1e-9)
    priced = step_timeline(m2, c, prof, k, order, skew).makespan_us
    import moesched.imbalance as imb
    monkeypatch.setattr(imb, "_price_hops", lambda *a: None)  # hops left even: the busiest rank's hops cost more
    assert base < step_timeline(m2, c, prof, k, order, skew).makespan_us < priced


def test_descend_only_keeps_improvements() -> None:
    from moesched.imbalance_plans import descend, policy_schedules
    m = dataclasses.replace(PRESETS["Mixtral-8x7B"], layers=2)
    loads = sampled_loads("zipf:1.2,drift=0.3", m, CLUSTER, 2)
    sc = policy_schedules(m, CLUSTER, NVLINK, ["vanilla"])["vanilla"]
    start = rank_plans(m, CLUSTER, NVLINK, policy_plans(m, CLUSTER, NVLINK, ["vanilla"]), loads)[0]
    found, cands = descend(m, CLUSTER, NVLINK, sc, start.result.mean_us, loads, max_evals=6)
    means = [start.result.mean_us] + [c.result.mean_us for c in cands]
    assert all(b < a for a, b in zip(means, means[1:]))  # each kept change lowers the mean step
    assert len(found) == len(cands) <= 6


H200_OPS = Path(__file__).resolve().parent.parent / "results" / "h200x1" / "routing-regime" / "h200x1-mixtral.json"


def test_uneven_groups_scale_a_measured_curve_by_the_tables_ratio() -> None:
    """A curve measured on the model's shape keeps its level; uneven groups take the operator
    tables' uneven / even ratio, more groups a larger one, and even groups none."""
    from moesched.imbalance import uneven_expert_us
    prof = Profile.load(H200_OPS)
    m = PRESETS["Mixtral-8x7B"]
    assert "expert_fwd" in prof.shapes[m.shape_key()]
    even8 = uneven_expert_us(prof, "expert_fwd", m, (1024,) * 8, 4000.0)
    skew8 = uneven_expert_us(prof, "expert_fwd", m, (1028, 116, 1288, 304, 128, 2284, 1008, 2036), 4000.0)
    skew2 = uneven_expert_us(prof, "expert_fwd", m, (511, 9123), 4000.0)
    assert even8 == pytest.approx(4000.0)
    assert 4000.0 < skew2 < skew8 < 4000.0 * 1.2
    assert uneven_expert_us(NVLINK, "expert_fwd", m, (511, 9123), 4000.0) == 4000.0  # no tables: as even


def test_skew_factor_shrinks_toward_one_group() -> None:
    tables = Profile.load(H200_OPS).ops.tables["bf16"]
    g0 = min(r[0] for r in tables.grouped if r[5] > 0)
    full = tables.skew_factor(1.0)
    assert full > 1.0 and tables.skew_factor(1.0, g0) == full and tables.skew_factor(1.0, 1) == 1.0
    assert 1.0 < tables.skew_factor(1.0, 2) < tables.skew_factor(1.0, 8) < full
    assert tables.skew_factor(0.0, 8) == 1.0
