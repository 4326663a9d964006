"""DEP inference (moesched.findep*): FinDEP's theorems on its cost model, the exact
evaluation against Eq. 13 and CP-SAT, the solvers' constraints, bad input."""
from __future__ import annotations

import random

import pytest

from moesched.errors import MoeschedError
from moesched.findep import (PAPER_COSTS, PAPER_MODELS, DepConfig, closed_form_ms, dep_model, makespan_ms,
                             memory_bound, task_times, throughput_tokens_s)
from moesched.findep_solve import algorithm1, naive_dep, own_search, paper_times, pppipe, r2_limit
from moesched.models import PRESETS

DS = PAPER_MODELS["DeepSeek-V2"]
QW = PAPER_MODELS["Qwen3-235B-A22B"]
SPLITS = list(PAPER_COSTS)


def _eq13_rate(m, split, m_a: int, r1: int, r2: float) -> float:
    tt = task_times(m, PAPER_COSTS[split], split[0], split[1], m_a, r2)  # r2 may be fractional
    return r1 * m_a / closed_form_ms(tt, m.layers, r1, r2)


def _best_r2_rate(m, split, m_a: int, r1: int) -> float:
    return max(_eq13_rate(m, split, m_a, r1, r2) for r2 in range(1, r2_limit(m, split[0], m_a) + 1))


@pytest.mark.parametrize("m", [DS, QW], ids=lambda m: m.name)
@pytest.mark.parametrize("split", SPLITS)
def test_theorems_1_to_3_throughput_grows_with_m_a_and_r1(m, split) -> None:
    """Thm. 1-2: for fixed r1 (r2 optimised) throughput is non-decreasing in m_a; Thm. 3: for
    fixed m_a it is non-decreasing in r1 (Eq. 13)."""
    by_m = [_best_r2_rate(m, split, m_a, 2) for m_a in range(1, 9)]
    assert all(b >= a * (1 - 1e-12) for a, b in zip(by_m, by_m[1:])), by_m
    by_r1 = [_best_r2_rate(m, split, 2, r1) for r1 in range(1, 9)]
    assert all(b >= a * (1 - 1e-12) for a, b in zip(by_r1, by_r1[1:])), by_r1


@pytest.mark.parametrize("split", SPLITS)
def test_theorem_4_makespan_convex_in_one_over_r2(split) -> None:
    """Thm. 4: with (r1, m_a) fixed, the Eq. 13 makespan is convex in u = 1/r2 (m_e = k'/r2)."""
    for m, m_a, r1 in ((DS, 2, 3), (QW, 4, 2)):
        us = [1 / r2 for r2 in (x / 4 for x in range(4, 4 * 32 + 1))]
        f = [closed_form_ms(task_times(m, PAPER_COSTS[split], split[0], split[1], m_a, 1 / u), m.layers, r1, 1 / u)
             for u in us]
        # second differences on a non-uniform grid: slopes non-decreasing in u (us descending)
        pts = sorted(zip(us, f))
        slopes = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(pts, pts[1:])]
        assert all(s2 >= s1 - 1e-6 * max(1.0, abs(s1)) for s1, s2 in zip(slopes, slopes[1:]))


def test_exact_evaluation_is_a_valid_schedule_and_no_later_than_eq13() -> None:
    """Every resource runs one task at a time, and ASAS evaluated exactly ends no later than
    the (feasible, hand-built) schedule of Eq. 12-13."""
    rng = random.Random(0)
    for _ in range(40):
        split = rng.choice(SPLITS)
        m = rng.choice([DS.with_seq(1024, 3), QW.with_seq(2048, 4)])
        m_a, r1, r2 = rng.randint(1, 4), rng.randint(1, 5), rng.randint(1, 6)
        tt = task_times(m, PAPER_COSTS[split], split[0], split[1], m_a, r2)
        sched = makespan_ms(tt, m.layers, DepConfig(m_a, r1, r2, "ASAS"))
        for res, iv in sched.intervals.items():
            iv = sorted(iv)
            assert all(a[1] <= b[0] + 1e-9 for a, b in zip(iv, iv[1:])), res
        assert len(sched.intervals["a2e"]) == len(sched.intervals["eg"]) == m.layers * r1 * r2
        assert sched.makespan_ms <= closed_form_ms(tt, m.layers, r1, r2) + 1e-6


def test_orders_within_a_small_gap_of_the_cpsat_optimum() -> None:
    pytest.importorskip("ortools")
    from moesched.findep_cpsat import optimal_makespan_ms
    m = DS.with_seq(1024, layers=2)
    gaps = []
    for split in SPLITS:
        for m_a, r1, r2 in ((1, 2, 2), (1, 3, 2), (2, 2, 3)):
            tt = task_times(m, PAPER_COSTS[split], split[0], split[1], m_a, r2)
            heur = min(makespan_ms(tt, m.layers, DepConfig(m_a, r1, r2, o)).makespan_ms for o in ("ASAS", "AASS"))
            opt, proven = optimal_makespan_ms(tt, m.layers, r1, r2, time_limit_s=10)
            assert opt <= heur + 1e-3  # the optimum over every order bounds the heuristics
            gaps.append((heur - opt) / opt)
    assert max(gaps) <= 0.02, gaps


@pytest.mark.parametrize("m", [DS, QW], ids=lambda m: m.name)
@pytest.mark.parametrize("split", SPLITS)
def test_solvers_respect_memory_and_their_rules(m, split) -> None:
    ag, eg = split
    times = paper_times(m, PAPER_COSTS[split], ag, eg)
    mm = memory_bound(m, ag, 48e9)
    f, p, n = algorithm1(m, times, ag, mm), pppipe(m, times, ag, mm), naive_dep(m, times, ag, mm)
    o = own_search(m, times, ag, mm, f, budget=30)
    for r in (f, p, n, o):
        assert r.config.r1 * r.config.m_a <= mm
    assert p.config.r2 == 1 and p.config.a2e_after_shared and p.config.r1 <= 4
    assert (n.config.r1, n.config.r2) == (1, 1)
    rate = {r.policy: throughput_tokens_s(m, ag, r.config, r.makespan_ms) for r in (f, p, n, o)}
    assert rate["findep"] >= rate["pppipe"] * (1 - 1e-9) and rate["pppipe"] >= rate["naive-dep"]
    assert rate["moesched"] >= rate["findep"] * (1 - 1e-9)


def test_order_search_stops_at_its_deadline() -> None:
    """A deadline already past: no neighbour is evaluated, FinDEP's own order is kept."""
    ag, eg = split = (4, 4)  # where the search improves on FinDEP's order
    times = paper_times(DS, PAPER_COSTS[split], ag, eg)
    mm = memory_bound(DS, ag, 48e9)
    f = algorithm1(DS, times, ag, mm)
    free = own_search(DS, times, ag, mm, f, budget=30)
    stopped = own_search(DS, times, ag, mm, f, budget=30, deadline=0.0)
    assert free.makespan_ms < f.makespan_ms - 1e-9  # the search improves when it may run
    assert stopped.config == f.config and stopped.makespan_ms == pytest.approx(f.makespan_ms)


def test_every_preset_solves_in_under_a_second() -> None:
    """Algorithm 1 on every preset, priced by the paper's lines and by the shipped profile."""
    from moesched.findep_profile import profile_times
    from moesched.profile import Profile
    prof = Profile.load("h200x4-nvlink")
    for name, pm in PRESETS.items():
        m = dep_model(pm)
        eg = 4 if pm.experts % 4 == 0 else 2
        for times in (paper_times(m, PAPER_COSTS[(4, 4)], 4, eg), profile_times(pm, prof, 4, eg)):
            r = algorithm1(m, times, 4, memory_bound(m, 4, 141e9))
            assert r.makespan_ms > 0 and r.config.r1 >= 1, name
            assert r.solve_s < 1.0, (name, r.solve_s)


def test_bad_input_is_refused() -> None:
    with pytest.raises(MoeschedError, match="r2 must be >= 1"):
        DepConfig(1, 1, 0)
    with pytest.raises(MoeschedError, match="order"):
        DepConfig(1, 1, 1, "SSAA")
    tt = task_times(DS, PAPER_COSTS[(4, 4)], 4, 4, 1, 1)
    with pytest.raises(MoeschedError, match="a before s"):
        makespan_ms(tt, 1, DepConfig(1, 2, 1), [("s", 0), ("a", 0), ("a", 1), ("s", 1)])
    with pytest.raises(MoeschedError, match="M_max = 0"):
        algorithm1(DS, paper_times(DS, PAPER_COSTS[(4, 4)], 4, 4), 4, 0)


def test_cli_solves_inference_on_the_profile(tmp_path, capsys) -> None:
    import json
    from moesched.cli import main
    out = tmp_path / "dep.json"
    assert main(["solve", "--mode", "inference", "--model", "DeepSeek-V2-Lite", "--layers", "4",
                 "--cluster", "1x4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "chosen: ag=" in text and "pppipe" in text and "naive-dep" in text
    assert "1 dense layer(s) are priced as MoE layers" in text  # DeepSeek-V2-Lite's first layer
    doc = json.loads(out.read_text())
    assert doc["format"] == "moesched.dep-schedule" and doc["ag"] + doc["eg"] == 4
    rates = {(r["ag"], r["eg"], r["policy"]): r["tokens_per_s"] for r in doc["table"]}
    for ag, eg, _ in rates:
        assert rates[(ag, eg, "moesched")] >= rates[(ag, eg, "findep")] * (1 - 1e-9)
        assert rates[(ag, eg, "findep")] >= rates[(ag, eg, "naive-dep")]
    assert doc["predicted"]["tokens_per_s"] == max(r for (_, _, p), r in rates.items() if p == "moesched")


@pytest.mark.parametrize("argv,needle", [
    (["--ag", "1"], "go together"),
    (["--ag", "1", "--eg", "3"], "do not divide over 3 expert GPUs"),
    (["--ag", "0", "--eg", "4"], "must be between 1 and"),
    (["--ag", "99999999999", "--eg", "1"], "must be between 1 and"),
    (["--zero", "1", "--pp", "2"], "--pp, --zero: training only"),
    (["--routing", "zipf:1"], "--routing: training only"),
    (["--ag", "2", "--eg", "3", "--cluster", "1x4"], "--cluster 1x4 has 4"),
])
def test_cli_inference_bad_input_is_one_line(tmp_path, capsys, argv, needle) -> None:
    from moesched.cli import main
    out = tmp_path / "dep.json"
    assert main(["solve", "--mode", "inference", "--model", "DeepSeek-V2-Lite", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moesched: error:") and needle in err[0]
    assert not out.exists()


def test_exposed_intervals_sum_to_the_exposed_time_and_ag_kinds_label_the_tasks() -> None:
    rng = random.Random(1)
    for _ in range(20):
        split = rng.choice(SPLITS)
        m = DS.with_seq(1024, 3)
        cfg = DepConfig(rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 4), rng.choice(["ASAS", "AASS"]),
                        rng.random() < 0.5)
        s = makespan_ms(task_times(m, PAPER_COSTS[split], split[0], split[1], cfg.m_a, cfg.r2), m.layers, cfg)
        iv = s.exposed_intervals()
        assert abs(sum(e - a for a, e in iv) - s.exposed_comm_ms()) < 1e-6
        busy = s.intervals["ag"] + s.intervals["eg"]
        assert not any(a < be and bs < e for a, e in iv for bs, be in busy)  # compute idle throughout
        assert sorted(s.ag_kinds) == sorted(["a", "s"] * (m.layers * cfg.r1))


def test_dep_timeline_figure_draws_every_panel() -> None:
    from moesched.findep_figure import dep_timeline_figure
    t = paper_times(DS.with_seq(1024, 2), PAPER_COSTS[(2, 6)], 2, 6)
    scheds = {n: makespan_ms(t(1, r2), 2, DepConfig(1, 2, r2, "ASAS", n == "pppipe"))
              for n, r2 in (("f", 3), ("pppipe", 1))}
    fig = dep_timeline_figure(scheds, "t")
    assert len(fig.axes) == 2 and all(len(ax.get_yticklabels()) == 5 for ax in fig.axes)
    with pytest.raises(MoeschedError, match="no DEP schedules"):
        dep_timeline_figure({}, "t")


def test_cli_infeasible_memory_bound_is_one_line(tmp_path, capsys) -> None:
    import json
    from moesched.cli import main
    from moesched.profile import Profile
    doc = Profile.load("h200x4-nvlink").to_dict()
    doc["hardware"]["gpu_memory_bytes"] = int(1e9)   # under DeepSeek-V2-Lite's 27 layers of attention weights
    prof = tmp_path / "tiny-memory.json"
    prof.write_text(json.dumps(doc))
    out = tmp_path / "dep.json"
    assert main(["solve", "--mode", "inference", "--model", "DeepSeek-V2-Lite", "--ag", "2", "--eg", "2",
                 "--profile", str(prof), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moesched: error: infeasible memory bound") and "M_max = 0" in err[0]
    assert not out.exists()
