"""The solver: never slower than a published schedule, valid plans, one-line errors, sweep."""
from __future__ import annotations

import csv
import dataclasses
import json
import random
from pathlib import Path

import pytest

from moesched.cli import main
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.network import NETWORKS_DIR
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.plan import Plan
from moesched.profile import Profile
from moesched.schedules import POLICIES, get
from moesched.schedules.base import evaluate, ready_priority, seq_priority
from moesched.sim import simulate
from moesched.solve import grids, solve
from moesched.sim import Compiled
from moesched.solve.rules import Rule

ROOT = Path(__file__).resolve().parent.parent
NVLINK = ROOT / "profiles" / "analytic-h200x4-nvlink.json"
TWO_NODES = ROOT / "profiles" / "analytic-h200x4-2nodes.json"
SETUPS = [(NVLINK, Cluster(1, 4)), (TWO_NODES, Cluster(2, 2))]


@pytest.fixture(scope="module")
def profiles() -> dict[Path, Profile]:
    return {p: Profile.load(p) for p, _ in SETUPS}


def _published_steps(model: MoEModel, cluster: Cluster, profile: Profile) -> dict[str, float]:
    out = {}
    for name in POLICIES:
        try:
            out[name] = evaluate(model, cluster, profile, get(name).schedule(model, cluster, profile)).step_us
        except MoeschedError:
            pass
    return out


def _check_never_slower(model: MoEModel, cluster: Cluster, profile: Profile) -> None:
    res = solve(model, cluster, profile)
    pub = _published_steps(model, cluster, profile)
    assert pub, "no published schedule ran"
    for name, step in pub.items():
        assert res.step_us <= step * (1 + 1e-9), f"{model.name}: moesched {res.step_us} slower than {name} {step}"
        row = next(r for r in res.table if r.policy == name)
        assert row.step_us == pytest.approx(step, rel=1e-9)


@pytest.mark.parametrize("setup", range(len(SETUPS)))
@pytest.mark.parametrize("preset,layers", [("GPT2-Tiny-MoE", None), ("BERT-Large-MoE", 6), ("DeepSeek-V2-S", None)])
def test_presets_never_slower(profiles, setup, preset, layers) -> None:
    path, cluster = SETUPS[setup]
    model = MoEModel.from_name(preset, **({"layers": layers} if layers else {}))
    _check_never_slower(model, cluster, profiles[path])


@pytest.mark.parametrize("setup", range(len(SETUPS)))
@pytest.mark.parametrize("grid", ["schemoe675", "fsmoe1458"])
def test_grid_points_never_slower(profiles, setup, grid) -> None:
    path, cluster = SETUPS[setup]
    rng = random.Random(7)
    for model in rng.sample(grids.grid(grid, cluster.world), 3):
        _check_never_slower(model, cluster, profiles[path])


def test_compiled_makespan_matches_timeline(profiles) -> None:
    """The solver's makespan-only path agrees with the Timeline rows simulate() builds."""
    profile = profiles[NVLINK]
    model = MoEModel.from_name("GPT2-Tiny-MoE", layers=3)
    for knobs in (Knobs.uniform(3, 2, at_chunked=True, grad_chunk_bytes=2**18),
                  Knobs((1, 4, 2), (2, 1, 4), grad_chunk_bytes=2**20), Knobs.uniform(3, 1, serialize=True)):
        g = build(model, Cluster(1, 4), profile, knobs)
        c = Compiled(g)
        for prio in (seq_priority(g), ready_priority(g), Rule("first", "first", "layer", 1)(g)):
            assert c.makespan_us(prio) == simulate(g, prio).df["end_us"].max()
            try:  # strict replay of a priority that contradicts a serialized chain deadlocks
                want = simulate(g, prio, strict=True).df["end_us"].max()
            except MoeschedError:
                with pytest.raises(MoeschedError):
                    c.makespan_us(prio, strict=True)
            else:
                assert c.makespan_us(prio, strict=True) == want


def test_default_rule_is_seq_order(profiles) -> None:
    g = build(MoEModel.from_name("GPT2-Tiny-MoE", layers=2), Cluster(1, 4), profiles[NVLINK],
              Knobs.uniform(2, 2, grad_chunk_bytes=2**20))
    a, b = seq_priority(g), Rule()(g)
    assert sorted(g.nodes, key=a.get) == sorted(g.nodes, key=b.get)


@pytest.mark.parametrize("setup", range(len(SETUPS)))
def test_plan_loads_and_matches_strict_replay(tmp_path, setup, capsys) -> None:
    path, cluster = SETUPS[setup]
    out = tmp_path / "plan.json"
    rc = main(["solve", "--model", "GPT2-Tiny-MoE", "--layers", "4", "--profile", str(path),
               "--cluster", f"{cluster.nodes}x{cluster.gpus_per_node}", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "predicted step" in text and "flowmoe" in text
    plan = Plan.load(out)
    assert plan.policy == "moesched"
    profile = Profile.load(path)
    g = build(plan.model, plan.cluster, profile, plan.knobs)
    tl = simulate(g, {t: i for i, t in enumerate(plan.order)}, strict=True)
    assert tl.makespan_us == pytest.approx(plan.predicted["step_us"], abs=1e-3)
    assert plan.replay(profile).makespan_us == pytest.approx(tl.makespan_us, rel=1e-12)
    assert "gpu_only_step_us" not in plan.predicted  # no host costs here: one step time


def test_one_step_time_and_speedup_direction_with_host_costs(tmp_path, capsys) -> None:
    """With host costs, the plan's step_us, `solve`'s table and `simulate`'s table all give
    the host model's step (the plan replayed as the executor runs it); speedup_vs_vanilla
    is vanilla's step / the row's step in both tables."""
    out = tmp_path / "plan.json"
    assert main(["solve", "--model", "GPT2-Tiny-MoE", "--layers", "2", "--profile", "h200x4-nvlink",
                 "--out", str(out)]) == 0
    solved = capsys.readouterr().out
    plan = Plan.load(out)
    profile = Profile.load("h200x4-nvlink")
    assert profile.host is not None
    assert plan.predicted["step_us"] == pytest.approx(plan.replay(profile).makespan_us, abs=1e-3)
    assert plan.predicted["gpu_only_step_us"] < plan.predicted["step_us"]
    assert main(["simulate", "--model", "GPT2-Tiny-MoE", "--profile", "h200x4-nvlink"]) == 0
    simulated = capsys.readouterr().out

    def rows(text: str) -> dict[str, list[str]]:
        lines = text.splitlines()
        head = next(i for i, x in enumerate(lines) if x.startswith("schedule"))
        assert "step_ms (host model)" in lines[head] and "speedup_vs_vanilla" in lines[head]
        return {x.split()[0]: x.split()[1:] for x in lines[head + 1:] if x.split() and x.split()[0] in POLICIES}

    a, b = rows(solved), rows(simulated)
    model = MoEModel.from_name("GPT2-Tiny-MoE", layers=2)
    cluster = Cluster(1, 4)
    for name in POLICIES:
        ev = evaluate(model, cluster, profile, get(name).schedule(model, cluster, profile))
        x = _replayed_us(model, cluster, profile, ev)
        assert float(a[name][0]) == pytest.approx(x / 1e3, abs=1e-3)
    van = float(a["vanilla"][0])
    for name in POLICIES:
        assert float(a[name][-1].rstrip("x")) == pytest.approx(van / float(a[name][0]), abs=0.006)
    assert float(a["vanilla"][-1].rstrip("x")) == 1.0
    # simulate (whole preset) uses the same definition: its speedups point the same way
    assert float(b["vanilla"][2].rstrip("x")) == 1.0
    for name in POLICIES:
        assert float(b[name][2].rstrip("x")) == pytest.approx(float(b["vanilla"][0]) / float(b[name][0]), abs=0.006)


def test_time_limit_returns_a_plan(tmp_path, capsys) -> None:
    out = tmp_path / "plan.json"
    rc = main(["solve", "--model", "BERT-Large-MoE", "--profile", str(NVLINK), "--out", str(out),
               "--time-limit", "0.001"])
    assert rc == 0
    assert "time limit" in capsys.readouterr().err
    Plan.load(out)


@pytest.mark.parametrize("argv", [
    ["--model", "Mixtral-8x22B", "--profile", str(NVLINK)],                  # does not fit in memory
    ["--model", "GPT2-Tiny-MoE", "--profile", str(TWO_NODES), "--cluster", "1x4", "--network", "NOINTRA"],
    # another node size and no intra-node tier stated
    ["--model", "GPT2-Tiny-MoE", "--profile", str(NVLINK), "--cluster", "1x4/ep3"],  # bad EP
    ["--model", "NoSuchModel", "--profile", str(NVLINK)],
])
def test_infeasible_exits_2_with_one_line(tmp_path, capsys, argv) -> None:
    out = tmp_path / "plan.json"
    if "NOINTRA" in argv:
        net = json.loads((NETWORKS_DIR / "dgx-h200.json").read_text())
        net["intra"] = None
        (tmp_path / "nointra.json").write_text(json.dumps(net))
        argv = [str(tmp_path / "nointra.json") if a == "NOINTRA" else a for a in argv]
    assert main(["solve", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moesched: error:") and "\n" not in err
    assert not out.exists()


def test_experts_not_divisible_raises(profiles) -> None:
    model = MoEModel(name="odd", layers=1, d_model=512, heads=8, seq_len=512, micro_batch=2, ffn_hidden=1024,
                     experts=6, top_k=2)
    with pytest.raises(MoeschedError):
        solve(model, Cluster(1, 4), profiles[NVLINK])


def test_grids_sizes() -> None:
    assert len(grids.schemoe675(4)) == 675
    assert len(grids.fsmoe1458(4)) == 1458
    assert all(m.layers == 1 and m.experts == 4 for m in grids.schemoe675(4))


def test_sweep_limit_writes_csv(tmp_path, capsys) -> None:
    out = tmp_path / "sweep.csv"
    rc = main(["sweep", "--grid", "schemoe675", "--profile", str(NVLINK), "--limit", "5", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "over best published" in text and "over vanilla" in text
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5
    for r in rows:
        pub = [float(r[f"{n}_us"]) for n in POLICIES if r[f"{n}_us"]]
        assert float(r["moesched_us"]) <= min(pub) + 1e-6


def test_link_bound_is_a_lower_bound(profiles) -> None:
    """The S_p prune is exact only if link_bound_us never exceeds a simulated step."""
    from moesched.solve.candidates import Evaluator
    for path, cluster in ((NVLINK, Cluster(1, 4)), (TWO_NODES, Cluster(2, 2))):
        model = MoEModel.from_name("GPT2-Tiny-MoE", layers=3)
        ev = Evaluator(model, cluster, profiles[path])
        for knobs in (Knobs.uniform(3, 2, grad_chunk_bytes=2**16), Knobs.uniform(3, 1, grad_chunk_bytes=2**20),
                      Knobs((1, 4, 2), (2, 1, 4), at_chunked=True, grad_chunk_bytes=3000)):
            bound = ev.link_bound_us(knobs)
            assert bound > 0
            for rule in (Rule(), Rule("first", "first", "layer", 1)):
                assert bound <= ev.step_us(knobs, rule) * (1 + 1e-9)


# ---- host-aware ranking -------------------------------------------------------------------
def _with_host(profile: Profile, alpha_us: float, per_chunk_us: float = 0.0) -> Profile:
    from moesched.host import HOST_KINDS, HostCost, HostCosts
    return dataclasses.replace(profile, host=HostCosts(20.0, {k: HostCost(alpha_us, 0.0, per_chunk_us)
                                                              for k in HOST_KINDS}))


def _replayed_us(model: MoEModel, cluster: Cluster, profile: Profile, ev) -> float:
    order = {t: i for i, t in enumerate(ev.timeline.order())}
    return simulate(build(model, cluster, profile, ev.schedule.knobs), order, strict=True).makespan_us


@pytest.mark.parametrize("alpha_us", [50.0, 2000.0])
def test_host_aware_solve_is_never_slower_as_executed(profiles, alpha_us) -> None:
    """With host costs the answer's plan, replayed as the executor runs it, is no slower
    than any published policy's plan replayed the same way; the table holds those replays."""
    model = MoEModel.from_name("DeepSeek-V2-S", layers=4)
    cluster = Cluster(2, 2)
    prof = _with_host(profiles[TWO_NODES], alpha_us)
    res = solve(model, cluster, prof)
    assert res.executed_us == pytest.approx(_replayed_us(model, cluster, prof, res.evaluation), rel=1e-9)
    for name in POLICIES:
        row = next(r for r in res.table if r.policy == name)
        if row.step_us is None:
            continue
        ev = evaluate(model, cluster, prof, get(name).schedule(model, cluster, prof))
        x = _replayed_us(model, cluster, prof, ev)
        assert row.executed_us == pytest.approx(x, rel=1e-9)
        assert row.step_us == pytest.approx(ev.step_us, rel=1e-9)
        assert res.executed_us <= x * (1 + 1e-9), f"moesched {res.executed_us} slower than {name} {x} as executed"


def test_costly_host_chunks_make_the_solver_keep_one_chunk(profiles) -> None:
    """Over NVLink, GPU costs alone favour a pipelined plan; when every task costs the host
    5 ms the host-aware ranking picks a plan without chunks (every degree 1)."""
    model = MoEModel.from_name("DeepSeek-V2-S", layers=4)
    cluster = Cluster(1, 4)
    free = solve(model, cluster, profiles[NVLINK])
    assert max(free.schedule.knobs.r_fwd + free.schedule.knobs.r_bwd) > 1
    costly = _with_host(profiles[NVLINK], 5000.0)
    res = solve(model, cluster, costly)
    assert set(res.schedule.knobs.r_fwd + res.schedule.knobs.r_bwd) == {1}
    assert res.executed_us < _replayed_us(model, cluster, costly, free.evaluation)
