"""The host model (moesched.host): profile section, fits, and the simulator's host resource."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.graph import build
from moesched.costs.calibrate import with_host
from moesched.costs.host import fit_host
from moesched.host import HOST_KINDS, HostCost, HostCosts
from moesched.knobs import Knobs
from moesched.models import PRESETS
from moesched.plan import from_timeline
from moesched.profile import Profile
from moesched.sim import HOST_COLUMNS, Timeline, simulate
from moesched.trace import read_chrome_trace, write_chrome_trace
from tests.test_sim import check_timeline

NVLINK = Profile.load("analytic-h200x4-nvlink")
MODEL = dataclasses.replace(PRESETS["GPT2-XL-MoE"], layers=2)
CLUSTER = Cluster(1, 4)


def _host(alpha_us: float, lag_us: float, kinds: tuple[str, ...] = HOST_KINDS) -> HostCosts:
    return HostCosts(lag_us, {k: HostCost(alpha_us) for k in kinds})


def _plan_graph(host: HostCosts | None, r: int = 2):
    """A FlowMoE-like plan (degree r, gradients chunked) and its graph on ``host``."""
    knobs = Knobs.uniform(MODEL.layers, r, grad_chunk_bytes=8 * 2**20)
    g0 = build(MODEL, CLUSTER, NVLINK, knobs)
    plan = from_timeline("t", MODEL, CLUSTER, knobs, simulate(g0), NVLINK)
    prof = dataclasses.replace(NVLINK, host=host)
    return plan, build(MODEL, CLUSTER, prof, knobs)


def _issue_times(g, order: list[str], end: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """The host's issue intervals re-derived from the model's rules and the GPU ends."""
    hs, he, h = {}, {}, float(g.graph["host_setup_us"])  # the step's setup comes first
    for t in order:
        a = g.nodes[t]
        if a["kind"] == "dispatch" and a.get("hop") in (None, "intra"):
            h = max([h] + [end[p] for p in g.predecessors(t) if g.nodes[p]["resource"] == "compute"])
        hs[t], h = h, h + a["host_us"]
        he[t] = h
    return hs, he


# ---- profile section and fits -------------------------------------------------------------
def test_profile_round_trip_keeps_host_costs(tmp_path: Path) -> None:
    prof = dataclasses.replace(NVLINK, host=HostCosts(25.0, {"attn_bwd": HostCost(900.0, 0.3, 50.0)},
                                                      {MODEL.shape_key(): {"attn_bwd": HostCost(1000.0, 0.2)}}))
    prof.save(tmp_path / "p.json")
    back = Profile.load(tmp_path / "p.json")
    assert back.host == prof.host
    assert back.host.us("attn_bwd", 1000, 2, MODEL.shape_key()) == pytest.approx(1200.0)
    assert back.host.us("attn_bwd", 2000, 2, "other-shape") == pytest.approx(900.0 + 600.0 + 100.0)  # pooled
    assert back.host.us("expert_fwd", 1000) == 0.0  # unmeasured kinds cost nothing


def test_host_cost_follows_the_layer_degree() -> None:
    """x is the task's tokens, r its layer's degree in its phase."""
    host = HostCosts(0.0, {"attn_bwd": HostCost(0.0, 0.0, 100.0), "attn_fwd": HostCost(0.0, 0.0, 10.0)})
    knobs = Knobs((1, 2), (4, 1))
    g = build(MODEL, CLUSTER, dataclasses.replace(NVLINK, host=host), knobs)
    got = {(a["kind"], a["layer"]): a["host_us"] for _, a in g.nodes(data=True) if a["kind"].startswith("attn")}
    assert got == {("attn_fwd", 0): 10.0, ("attn_fwd", 1): 20.0, ("attn_bwd", 0): 400.0, ("attn_bwd", 1): 100.0}


def test_scaled_host_costs_price_every_kind_and_shape_by_the_factor() -> None:
    """A host f times slower issues every task f times longer (pooled and per shape); the
    lag (the GPU's side) stays."""
    host = HostCosts(25.0, {"attn_bwd": HostCost(900.0, 0.3, 50.0)},
                     {MODEL.shape_key(): {"attn_bwd": HostCost(1000.0, 0.2, 10.0)}})
    f = host.scaled(1.5)
    assert f.lag_us == 25.0
    for shape in (MODEL.shape_key(), "other-shape"):
        assert f.us("attn_bwd", 1000, 2, shape) == pytest.approx(1.5 * host.us("attn_bwd", 1000, 2, shape))


@pytest.mark.parametrize("host, msg", [
    ({"lag_us": 1.0, "kinds": {}}, "must have the keys"),
    ({"lag_us": 1.0, "kinds": {}, "shapes": {}, "x_unit": "flops"}, "x_unit"),
    ({"lag_us": -1.0, "kinds": {}, "shapes": {}}, "lag_us"),
    ({"lag_us": True, "kinds": {}, "shapes": {}}, "lag_us"),
    ({"lag_us": 1e300, "kinds": {}, "shapes": {}}, "lag_us"),
    ({"lag_us": 1.0, "kinds": {"warp": {"alpha_us": 1.0, "per_unit_us": 0.0, "per_chunk_us": 0.0}},
      "shapes": {}}, "task kinds"),
    ({"lag_us": 1.0, "kinds": {"attn_fwd": {"alpha_us": 1.0}}, "shapes": {}}, "alpha_us, per_unit_us"),
    ({"lag_us": 1.0, "kinds": {"attn_fwd": {"alpha_us": 1.0, "per_unit_us": 0.0, "per_chunk_us": -2.0}},
      "shapes": {}}, "negative"),
    ({"lag_us": 1.0, "kinds": {"attn_fwd": {"alpha_us": "inf", "per_unit_us": 0.0, "per_chunk_us": 0.0}},
      "shapes": {}}, "alpha_us has a non-numeric value"),
    ({"lag_us": 1.0, "kinds": {"attn_fwd": {"alpha_us": 1e308, "per_unit_us": 0.0, "per_chunk_us": 0.0}},
      "shapes": {}}, "alpha_us is 1e\\+308, outside"),
    ({"lag_us": 1.0, "kinds": {}, "shapes": {"s": {"attn_fwd": {"alpha_us": 1.0, "per_unit_us": 10**400,
                                                               "per_chunk_us": 0.0}}}}, "per_unit_us is inf"),
])
def test_malformed_host_section_is_rejected(tmp_path: Path, host: dict, msg: str) -> None:
    d = NVLINK.to_dict()
    d["host"] = host
    with pytest.raises(MoeschedError, match=msg):
        Profile.from_dict(json.loads(json.dumps(d)))


def test_fit_host_recovers_the_coefficients() -> None:
    rows = [("s", "expert_fwd", x, r, 300.0 + 0.05 * x + 70.0 * r) for x in (256, 512, 1024, 2048)
            for r in (1, 2, 4) for _ in range(3)]
    rows += [("s", "grad_ar", 4e6, 1, 40.0), ("s", "grad_ar", 4e6, 1, 60.0), ("s", "grad_ar", 4e6, 1, 50.0)]
    rows += [("s", "combine", x, 1, 500.0 - 0.1 * x) for x in (256, 1024)]  # a negative slope is dropped
    h = fit_host(rows, 31.0)
    c = h.shapes["s"]["expert_fwd"]
    assert (c.alpha_us, c.per_unit_us, c.per_chunk_us) == pytest.approx((300.0, 0.05, 70.0), rel=1e-6)
    assert h.kinds["expert_fwd"].r2 == pytest.approx(1.0) and c.r2 is None  # a shape's: its pool scaled
    assert h.kinds["grad_ar"].alpha_us == pytest.approx(50.0) and h.lag_us == 31.0  # one point: the median
    cb = h.kinds["combine"]
    assert cb.per_unit_us == 0.0 and cb.per_chunk_us == 0.0 and cb.alpha_us == pytest.approx(436.0)
    with pytest.raises(MoeschedError, match="unknown task kind"):
        fit_host([("s", "warp", 1.0, 1, 1.0)], 0.0)


def test_step_finish_is_one_constant_that_calibration_stalls_do_not_set() -> None:
    """The four-layer GPT samples of results/h200x1/passes9 (9 of 12 stalled) and its
    one-layer ones: the finish is priced at the lower quartile, the same at any parameter
    bytes, where a line through the medians priced the four-layer finish at 0.8 ms; the
    setup keeps its slope in bytes (the gradient buffers' zeroing)."""
    x1, x4 = 675897600.0, 2703590400.0
    fin = [(x1, us) for us in (59, 88, 89)] + [(x4, us) for us in (154, 797, 742, 837, 140, 517, 817, 1110, 133,
                                                                    871, 922, 1109)]
    rows = [("s", "step_finish", x, 1, float(us)) for x, us in fin]
    rows += [("s", "step_setup", x, 1, 113.0 + 3.5e-7 * x) for x in (x1, x4) for _ in range(3)]
    h = fit_host(rows, 30.0)
    finish = h.shapes["s"]["step_finish"]
    assert finish.per_unit_us == 0.0 and finish.per_chunk_us == 0.0
    assert finish(x1, 1) == finish(x4, 1) and 88.0 < finish(x4, 1) < 160.0, finish
    assert h.kinds["step_finish"] == finish
    setup = h.shapes["s"]["step_setup"]
    assert setup.per_unit_us == pytest.approx(3.5e-7) and setup(x4, 1) == pytest.approx(113.0 + 3.5e-7 * x4)


_SAMPLE = st.tuples(st.sampled_from(["M1-gpt-bf16", "M2-gpt-bf16", "M3-gpt-fp32"]),
                    st.sampled_from(["dispatch", "expert_fwd", "step_setup", "step_finish"]),
                    st.sampled_from([1e6, 4e6, 2.6e7, 1e9]), st.sampled_from([1, 2, 4]),
                    st.floats(1.0, 5000.0))


@settings(max_examples=150, deadline=None)
@given(st.lists(_SAMPLE, min_size=1, max_size=40))
def test_fitted_host_costs_are_valid_at_any_samples(samples: list) -> None:
    """Whatever the calibration measured: slopes >= 0, the finish a constant, a step kind
    sampled at one (x, r) priced there within its samples' range, and the section
    round-trips through a profile's JSON."""
    h = fit_host(samples, 25.0)
    groups = [h.kinds, *h.shapes.values(), *h.dtypes.values()]
    for by in groups:
        for kind, c in by.items():
            assert c.per_unit_us >= 0.0 and c.per_chunk_us >= 0.0, (kind, c)
            if kind == "step_finish":
                assert c.per_unit_us == c.per_chunk_us == 0.0
    for shape, by in h.shapes.items():
        for kind, c in by.items():
            pts = [(x, r, us) for s, k, x, r, us in samples if s == shape and k == kind]
            if len({(x, r) for x, r, _ in pts}) == 1 and kind in ("step_setup", "step_finish"):
                x, r, _ = pts[0]
                lo, hi = min(u for *_, u in pts), max(u for *_, u in pts)
                assert lo - 1e-3 <= c(x, r) <= hi + 1e-3, (kind, c, pts)  # alpha rounded to 3 places
    assert HostCosts.from_dict(json.loads(json.dumps(h.to_dict()))) == h


# ---- the simulator's host resource ----------------------------------------------------------
def test_free_host_changes_nothing() -> None:
    plan, g = _plan_graph(_host(0.0, 0.0))
    _, g0 = _plan_graph(None)
    prio = {t: i for i, t in enumerate(plan.order)}
    assert simulate(g, prio, strict=True).makespan_us == pytest.approx(simulate(g0, prio, strict=True).makespan_us)


@pytest.mark.parametrize("alpha_us, lag_us", [(40.0, 25.0), (900.0, 30.0)])
def test_host_rules_hold(alpha_us: float, lag_us: float) -> None:
    """GPU work starts lag after its issue, compute ends lag after its issue ended, a
    collective waits for its issue, dispatch issue waits for routing; the host is serial."""
    plan, g = _plan_graph(_host(alpha_us, lag_us))
    tl = simulate(g, {t: i for i, t in enumerate(plan.order)}, strict=True)
    check_timeline(g, tl, exact_durations=False)
    start = dict(zip(tl.df["task"], tl.df["start_us"]))
    end = dict(zip(tl.df["task"], tl.df["end_us"]))
    hs, he = _issue_times(g, plan.order, end)
    eps = 1e-6
    for t, a in g.nodes(data=True):
        if a["resource"] == "compute":
            assert start[t] >= hs[t] + lag_us - eps and end[t] >= he[t] + lag_us - eps, t
        else:
            assert start[t] >= he[t] + lag_us - eps, t
    setup, finish = g.graph["host_setup_us"], g.graph["host_finish_us"]
    assert setup == finish == alpha_us  # the step kinds cost alpha here, like the tasks
    assert tl.makespan_us >= setup + len(g) * alpha_us + finish  # the host issues one task at a time
    assert tl.makespan_us == pytest.approx(max(end.values()) + finish)  # the step ends after its finish
    if alpha_us > 500:  # host-bound: the GPU only trails the host
        assert tl.makespan_us <= max(he.values()) + lag_us + max(a["duration_us"] for _, a in g.nodes(data=True)) \
            + finish


def _rank_param_bytes(m) -> float:
    from moesched.memory import param_counts
    return float(sum(param_counts(m, CLUSTER.ep_size)) * m.bytes_per_elem)


def test_step_setup_and_finish_follow_the_parameter_bytes() -> None:
    """step_setup / step_finish are priced per step at x = the parameter bytes of one rank
    (work units; the model's layers in token units), and shift the strict replay by exactly
    their sum when the GPU waits for the host from the start."""
    base = HostCosts(30.0, {k: HostCost(50.0) for k in HOST_KINDS if not k.startswith("step_")})
    steps = dataclasses.replace(base, kinds=dict(base.kinds, step_setup=HostCost(100.0, 2e-7),
                                                 step_finish=HostCost(70.0)))
    plan, g0 = _plan_graph(base)
    _, g1 = _plan_graph(steps)
    setup = 100.0 + 2e-7 * _rank_param_bytes(MODEL)
    assert (g1.graph["host_setup_us"], g1.graph["host_finish_us"]) == (pytest.approx(setup), 70.0)
    assert g0.graph["host_setup_us"] == g0.graph["host_finish_us"] == 0.0  # unmeasured: free
    prio = {t: i for i, t in enumerate(plan.order)}
    t0, t1 = simulate(g0, prio, strict=True), simulate(g1, prio, strict=True)
    assert t1.makespan_us == pytest.approx(t0.makespan_us + setup + 70.0)
    _, g2 = _plan_graph(dataclasses.replace(steps, kinds=dict(steps.kinds, step_setup=HostCost(100.0, 200.0)),
                                            x_unit="tokens"))
    assert g2.graph["host_setup_us"] == 100.0 + 200.0 * MODEL.layers


def test_task_host_cost_is_priced_on_work_or_tokens_by_the_unit() -> None:
    """x of a task is its FLOPs (bytes of an all-to-all) in work units, its tokens in the
    token units of profiles from before: the same coefficients price the same graph apart."""
    cost = {k: HostCost(10.0, 1e-6) for k in HOST_KINDS}
    _, gw = _plan_graph(HostCosts(0.0, cost, x_unit="work"))
    _, gt = _plan_graph(HostCosts(0.0, cost, x_unit="tokens"))
    for t, a in gw.nodes(data=True):
        if a["kind"] in ("attn_fwd", "expert_dx", "dispatch"):
            assert a["host_us"] == pytest.approx(10.0 + 1e-6 * a["work"])
            assert gt.nodes[t]["host_us"] == pytest.approx(10.0 + 1e-6 * a["tokens"])
            assert a["work"] > 100 * a["tokens"]  # the two units differ: the check is not vacuous


def test_token_unit_samples_convert_to_work_units() -> None:
    """benchmarks/host_units.py: samples measured in tokens (and layers) are rewritten as
    work and refitted; a host whose cost is linear in FLOPs is recovered exactly."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from host_units import convert
    from moesched.graph import _FLOPS
    key = MODEL.shape_key()
    rows = [(key, "attn_fwd", float(t), 1, 20.0 + 3e-9 * _FLOPS["attn_fwd"](MODEL, t)) for t in (512, 1024, 4096)]
    rows += [(key, "step_setup", float(L), 1, 50.0 + 4e-7 * _rank_param_bytes(dataclasses.replace(MODEL, layers=L)))
             for L in (1, 2)]
    prof = with_host(NVLINK, rows, 25.0, x_unit="tokens")
    assert prof.host.x_unit == "tokens"
    out = convert(prof, {key: MODEL})
    assert out.host.x_unit == "work" and out.meta["samples"]["host_x_unit"] == "work"
    c, s = out.host.kinds["attn_fwd"], out.host.kinds["step_setup"]
    assert (c.alpha_us, c.per_unit_us) == (pytest.approx(20.0, abs=1e-3), pytest.approx(3e-9))
    assert (s.alpha_us, s.per_unit_us) == (pytest.approx(50.0, abs=1e-3), pytest.approx(4e-7))
    with pytest.raises(MoeschedError, match="lacks the shapes"):
        convert(prof, {})


def test_list_scheduling_ignores_the_host() -> None:
    """The host is modelled for replays of a plan's order (strict) only."""
    _, g = _plan_graph(_host(500.0, 30.0))
    _, g0 = _plan_graph(None)
    assert simulate(g).makespan_us == pytest.approx(simulate(g0).makespan_us)


def test_inconsistent_order_still_deadlocks_with_a_host() -> None:
    plan, g = _plan_graph(_host(10.0, 5.0))
    prio = {t: -i for i, t in enumerate(plan.order)}  # reversed: not topological
    with pytest.raises(MoeschedError, match="deadlock"):
        simulate(g, prio, strict=True)


def test_host_wait_survives_the_trace(tmp_path: Path) -> None:
    df = pd.DataFrame([("a", "attn_fwd", 0, 0, "fwd", 0, "compute", 10.0, 20.0)],
                      columns=["task", "kind", "layer", "chunk", "phase", "rank", "resource", "start_us", "end_us"])
    host = pd.DataFrame([("a", 0, "main", 1.0, 9.0, 2.5)], columns=HOST_COLUMNS)
    write_chrome_trace(Timeline(df, {}, host=host), tmp_path / "t.json", label="measured")
    back = read_chrome_trace(tmp_path / "t.json")
    assert back.host[HOST_COLUMNS].values.tolist() == host.values.tolist()


# ---- all-to-alls timed inside executor steps --------------------------------------------------
def test_a2a_samples_keep_the_last_and_the_median_rank() -> None:
    from executor.profiling.host import a2a_samples
    k1, k2 = ("s", 0, 2, "L0.F.dispatch.c0"), ("s", 0, 2, "L0.F.combine.c0")
    ranks = [{k1: ("s", "intra", 1e6, 900.0), k2: ("s", "intra", 1e6, 300.0)},
             {k1: ("s", "intra", 1e6, 250.0), k2: ("s", "intra", 1e6, 700.0)},
             {k1: ("s", "intra", 1e6, 400.0), k2: ("s", "intra", 1e6, 350.0)}]
    assert sorted(a2a_samples(ranks)) == [("s", "intra", 1e6, 250.0, 400.0), ("s", "intra", 1e6, 300.0, 350.0)]


def test_in_situ_a2a_costs_take_precedence(tmp_path: Path) -> None:
    """all-to-alls measured in executor steps on a shape price that shape's all-to-alls (the
    graph's dispatch tasks included); other shapes keep the micro-benchmark; one measured
    size is not enough to replace it; the costs survive a save and load."""
    from moesched import work
    shape = MODEL.shape_key()
    b1, b2 = float(work.a2a_bytes(MODEL, MODEL.tokens)), float(work.a2a_bytes(MODEL, MODEL.tokens // 2))
    rows = [("x", "expert_fwd", 256.0, 1, 100.0)]
    a2a = [(shape, "intra", b1, 1.0, 400.0), (shape, "intra", b1, 1.0, 420.0), (shape, "intra", b1, 1.0, 2000.0),
           (shape, "intra", b2, 1.0, 250.0), ("other", "intra", b1, 1.0, 9.0)]  # the ranks' medians price
    prof = with_host(NVLINK, rows, 10.0, a2a)
    assert prof.a2a_us("intra", b1, shape) == pytest.approx(420.0)  # median of the three
    assert prof.a2a_us("intra", b2, shape) == pytest.approx(250.0)
    assert prof.a2a_us("intra", b1, "other") == pytest.approx(NVLINK.comm_us("all_to_all", "intra", b1))
    assert prof.a2a_us("intra", b1, None) == pytest.approx(NVLINK.comm_us("all_to_all", "intra", b1))
    g = build(MODEL, CLUSTER, prof, Knobs.uniform(MODEL.layers, 1))
    durs = [a["duration_us"] for _, a in g.nodes(data=True) if a["kind"] == "dispatch"]
    assert durs == [pytest.approx(420.0)] * MODEL.layers
    prof.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json").a2a_us("intra", b2, shape) == pytest.approx(250.0)
    # beyond the measured sizes: larger at the largest one's time per byte; smaller as the
    # micro-benchmark, scaled to the smallest in-situ point
    assert prof.a2a_us("intra", 4 * b1, shape) == pytest.approx(4 * 420.0)
    bench = lambda x: NVLINK.comm_us("all_to_all", "intra", x)  # noqa: E731
    assert prof.a2a_us("intra", b2 / 8, shape) == pytest.approx(250.0 * bench(b2 / 8) / bench(b2))


def test_in_situ_a2a_beyond_a_flat_fit_grows_with_bytes() -> None:
    """Three in-situ sizes whose times do not grow (skew, noise) fit a flat line; a larger
    all-to-all still costs more in proportion (measured so in host memory, GPT2-XL at 16k tokens)."""
    shape = MODEL.shape_key()
    mb = 2.0**20
    a2a = [(shape, "intra", 6.25 * mb, 1.0, 803.0), (shape, "intra", 12.5 * mb, 1.0, 670.0),
           (shape, "intra", 25 * mb, 1.0, 761.0)]
    prof = with_host(NVLINK, [("x", "expert_fwd", 256.0, 1, 100.0)], 10.0, a2a)
    assert prof.shapes[shape]["all_to_all@intra"].beta_us_per_unit == 0.0  # the flat fit
    assert prof.a2a_us("intra", 100 * mb, shape) == pytest.approx(4 * 761.0)


def test_calibration_step_samples_on_cuda() -> None:
    """One measured step of the degree-1 calibration plan (a simulated timeline, every task
    issued 50 µs before its GPU start): a host sample per task plus setup and finish, the lag
    of every compute task, the flat all-to-alls but the forward dispatch, and the compute of
    in-situ kinds with no collective beside it; on CPU neither lags nor compute."""
    from types import SimpleNamespace

    from executor.profiling.host import HostSamples, _add_step, calibration_plans
    from moesched.costs.calibrate import INSITU_KINDS
    plan = calibration_plans(MODEL, CLUSTER)[0]
    assert set(plan.knobs.r_fwd + plan.knobs.r_bwd) == {1}
    g = build(plan.model, CLUSTER, NVLINK, plan.knobs)
    df = simulate(g, strict=False).df
    host = pd.DataFrame({"task": df["task"], "rank": 0, "thread": "main", "start_us": df["start_us"] - 50.0,
                         "end_us": df["start_us"] - 10.0, "wait_us": 0.0})
    tl = SimpleNamespace(df=df, host=host, meta={"setup_us": 5.0, "call_us": float(df["end_us"].max()) + 20.0})
    links = [(s, e) for r, s, e in zip(df["resource"], df["start_us"], df["end_us"]) if r != "compute"]
    alone = {t for t, k, r, s, e in zip(df["task"], df["kind"], df["resource"], df["start_us"], df["end_us"])
             if r == "compute" and k in INSITU_KINDS and not any(a < e and s < b for a, b in links)}
    assert alone  # the check below is not vacuous
    cuda, cpu = HostSamples(), HostSamples()
    _add_step(cuda, "s", (0, 2), plan, g.nodes, tl, cuda=True)
    _add_step(cpu, "s", (0, 2), plan, g.nodes, tl, cuda=False)
    assert len(cuda.samples) == len(df) + 2 and cuda.samples == cpu.samples
    pb = _rank_param_bytes(plan.model)
    assert cuda.samples[:2] == [("s", "step_setup", pb, 1, 5.0), ("s", "step_finish", pb, 1, 15.0)]  # call - setup - last end
    assert all(us == pytest.approx(40.0) for *_, us in cuda.samples[2:])
    assert cuda.lags_us == [50.0] * int((df["resource"] == "compute").sum())
    assert sorted(k[3] for k in cuda.a2a) == sorted(
        t for t, k in zip(df["task"], df["kind"]) if k in ("combine", "combine_bwd", "dispatch_bwd"))
    assert len(cuda.compute) == len(alone) and all(k in INSITU_KINDS for _, k, _, _ in cuda.compute)
    assert (cpu.lags_us, cpu.compute, cpu.a2a) == ([], [], cuda.a2a)


def test_chunked_calibration_steps_calibrate_every_kind_but_expert_dx() -> None:
    """A degree-2 calibration step (simulated timeline, every task issued 50 µs ahead) gives
    compute samples of the in-situ kinds that ran alone, chunks included, but none of
    expert_dx (its first chunk carries the saved-activation copy, charged apart)."""
    from types import SimpleNamespace

    from executor.profiling.host import HostSamples, _add_step, calibration_plans, insitu_sample
    from moesched.costs.calibrate import INSITU_KINDS
    assert insitu_sample("expert_dx", True) and not insitu_sample("expert_dx", False)
    assert insitu_sample("expert_fwd", False) and not insitu_sample("attn_fwd", True)
    plan = next(p for p in calibration_plans(MODEL, CLUSTER) if set(p.knobs.r_fwd) == {2})
    g = build(plan.model, CLUSTER, NVLINK, plan.knobs)
    df = simulate(g, strict=False).df
    host = pd.DataFrame({"task": df["task"], "rank": 0, "thread": "main", "start_us": df["start_us"] - 50.0,
                         "end_us": df["start_us"] - 10.0, "wait_us": 0.0})
    tl = SimpleNamespace(df=df, host=host, meta={"setup_us": 5.0, "call_us": float(df["end_us"].max()) + 20.0})
    out = HostSamples()
    _add_step(out, "s", (1, 2), plan, g.nodes, tl, cuda=True)
    links = [(s, e) for r, s, e in zip(df["resource"], df["start_us"], df["end_us"]) if r != "compute"]
    alone = [t for t, k, r, s, e in zip(df["task"], df["kind"], df["resource"], df["start_us"], df["end_us"])
             if r == "compute" and k in INSITU_KINDS and k != "expert_dx" and not any(a < e and s < b for a, b in links)]
    assert alone  # the check below is not vacuous
    assert len(out.compute) == len(alone) and all(k != "expert_dx" for _, k, _, _ in out.compute)


def test_each_dtype_pools_its_own_host_costs() -> None:
    """fp32 expert tasks loop over experts (2-3x the host time of bf16's grouped GEMMs): the
    pooled costs come from the dtype with most samples; another dtype's pool is that cost
    times the median ratio of its own samples to it (its slopes in work and degree kept from
    the main pool: one shape whose chunks split its work cannot tell them apart), a kind the
    main dtype lacks fitted on its own; a shape the profile did not calibrate takes its dtype's."""
    def main_us(x: float, r: int) -> float:
        return 400.0 + 1e-9 * x + 50.0 * r
    bf = [(f"M{m}-gpt-bf16", "expert_fwd", x, r, main_us(x, r)) for m in (1, 2) for x in (1e9, 2e9, 4e9) for r in (1, 2)]
    fp = [("M3-gpt-fp32", "expert_fwd", 4e9 / r, r, 3.0 * main_us(4e9 / r, r)) for r in (1, 2, 4)]
    fp += [("M3-gpt-fp32", "shared_fwd", x, 1, 70.0 + 1e-9 * x) for x in (1e9, 2e9)]
    h = fit_host(bf + fp + [("old-key", "expert_fwd", 1e9, 1, 9.0)], 20.0)
    assert h.kinds["expert_fwd"].alpha_us == pytest.approx(400.0, rel=1e-3) and "shared_fwd" not in h.kinds
    assert set(h.dtypes) == {"fp32"} and set(h.dtypes["fp32"]) == {"expert_fwd", "shared_fwd"}
    for x, r in ((1e8, 1), (3e9, 2), (8e9, 8)):   # an unprofiled fp32 shape, any work and degree
        assert h.us("expert_fwd", x, r, "M9-gpt-fp32") == pytest.approx(3.0 * main_us(x, r), rel=1e-3)
        assert h.us("expert_fwd", x, r, "M9-gpt-bf16") == pytest.approx(main_us(x, r), rel=1e-3)
        assert h.us("expert_fwd", x, r, "M9-gpt-fp16") == pytest.approx(main_us(x, r), rel=1e-3)  # no fp16 pool
    assert h.us("shared_fwd", 3e9, 1, "M9-gpt-fp32") == pytest.approx(73.0, rel=1e-3)
    back = HostCosts.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back == h and back.scaled(2.0).us("expert_fwd", 1e9, 1, "M9-gpt-fp32") == pytest.approx(
        6.0 * main_us(1e9, 1), rel=1e-3)
    for bad in ({"fp8": {}}, [], {"fp32": {"warp": {"alpha_us": 1.0, "per_unit_us": 0, "per_chunk_us": 0}}}):
        with pytest.raises(MoeschedError) as e:
            HostCosts.from_dict(dict(h.to_dict(), dtypes=bad))
        assert "host.dtypes" in str(e.value) and "\n" not in str(e.value)


def test_a_shape_scales_its_pool_where_its_chunks_split_the_work() -> None:
    """One shape's calibration plans split a layer's work W over r chunks (x = W / r), so
    its samples cannot tell a slope in x from one in r: a shape's task costs are its pool's
    (fitted over shapes whose x and r vary apart) times the median ratio of its samples, and
    so carry to four times the micro-batch; its own exact fit through three noisy points
    (+-10%) would not. The step kinds keep the shape's own fit."""
    def main_us(x: float, r: int) -> float:
        return 250.0 + 1e-6 * x + 20.0 * r
    w = 26e6
    pool = [(f"M{m}-gpt-bf16", "dispatch", x, r, main_us(x, r)) for m in (1, 2) for x in (5e6, 1e7, 2e7, 4e7)
            for r in (1, 2, 4)]
    noise = ((1, 1.1), (2, 1.0), (4, 0.9))
    shape = [("M3-gpt-bf16", "dispatch", w / r, r, 1.2 * main_us(w / r, r) * e) for r, e in noise]
    setup = [("M3-gpt-bf16", "step_setup", x, 1, 100.0 + 3e-7 * x) for x in (7e8, 2.8e9)]
    h = fit_host(pool + shape + setup, 20.0)
    c = h.shapes["M3-gpt-bf16"]["dispatch"]
    assert c(4 * w, 1) == pytest.approx(1.2 * main_us(4 * w, 1), rel=0.01)  # the same layer, 4x the tokens
    own = fit_host([s for s in shape if s[0] == "M3-gpt-bf16"], 20.0).shapes["M3-gpt-bf16"]["dispatch"]
    assert abs(own(4 * w, 1) / (1.2 * main_us(4 * w, 1)) - 1) > 0.2  # what the shape alone would say
    assert h.shapes["M3-gpt-bf16"]["step_setup"](2.8e9, 1) == pytest.approx(100.0 + 3e-7 * 2.8e9)


def test_calibration_passes_interleave_every_plan_and_keep_their_spread() -> None:
    """measure_host takes its timed steps in passes over every plan of every model (one
    shape's steps do not sit at one moment of the host): on one gloo rank, two models, two
    passes -- each pass times every plan once, in the same order, after the pass's probe;
    pass_spread is the range of a plan's passes over their median."""
    import torch
    import torch.distributed as dist
    from localhost import free_port

    from executor.profiling.host import calibration_plans, measure_host, pass_spread
    from executor.testplans import tiny_model
    models = [tiny_model(), dataclasses.replace(tiny_model(), name="tiny-b", seq_len=16)]
    probes = iter([11.0, 13.0])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        got = measure_host(models, Cluster(1, 1), 0, torch.device("cpu"), steps=2, warmup=1,
                           probe=lambda: next(probes))
    finally:
        dist.destroy_process_group()
    order = [(m.shape_key(), pi) for m in models for pi, _ in enumerate(calibration_plans(m, Cluster(1, 1)))]
    assert len(order) >= 4 and got.probes_us == [11.0, 13.0]
    assert [(s, pi) for s, pi, _, _ in got.step_us] == order * 2
    assert [p for *_, p, _ in got.step_us] == [0] * len(order) + [1] * len(order)
    assert {s for s, *_ in got.samples} == {m.shape_key() for m in models}
    assert pass_spread([("a", 0, 0, 90.0), ("a", 0, 1, 110.0), ("a", 1, 0, 50.0), ("a", 1, 1, 50.0)]) \
        == {"mean": 10.0, "max": 20.0}
    assert pass_spread([("a", 0, 0, 90.0)]) == {}


def test_calibration_steps_benchmark_times_every_step_of_every_plan(tmp_path: Path) -> None:
    """benchmarks/calibration_steps.py on one CPU process: a row per step of each
    calibration plan (setup, finish and call µs, call the longest), and a bad name
    is one error line, exit 2, no file."""
    root = Path(__file__).resolve().parents[1]
    m = dataclasses.replace(MODEL, layers=2, d_model=64, heads=4, seq_len=32, micro_batch=2, ffn_hidden=128,
                            experts=4, dtype="fp32", name="tiny")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps([{"name": "tiny", "model": m.to_dict()}]))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    def run(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "benchmarks/calibration_steps.py", "--configs", str(cfg), *a],
                              cwd=root, env=env, capture_output=True, text=True, timeout=300)
    r = run("--names", "tiny", "--steps", "6", "--out", str(tmp_path / "s.csv"))
    assert r.returncode == 0, r.stderr
    d = pd.read_csv(tmp_path / "s.csv")
    assert sorted(d.plan.unique()) == ["host-r1-L1", "host-r1-L2", "host-r2-L2", "host-r2-L2-at"]
    assert (d.groupby("plan").step.apply(list) == [list(range(1, 7))] * 4).all()
    assert (d.setup_us > 0).all() and (d.finish_us >= 0).all() and (d.call_us > d.setup_us + d.finish_us).all()
    bad = run("--names", "nope", "--out", str(tmp_path / "t.csv"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no config" in bad.stderr
    assert not (tmp_path / "t.csv").exists()
