"""Measured routing on the task graph (moesched.routing) and the validate run that uses it."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moesched import work
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.models import PRESETS
from moesched.profile import Profile
from moesched.routing import Routing, apply_routing
from moesched.sim import simulate
from tests.test_sim import check_timeline

ROOT = Path(__file__).resolve().parent.parent
NVLINK = Profile.load("analytic-h200x4-nvlink")
MODEL = dataclasses.replace(PRESETS["GPT2-XL-MoE"], layers=2, capacity_factor=None)
CLUSTER = Cluster(1, 4)


def _even(model=MODEL, S: int = 4) -> list[list[list[int]]]:
    per = work.routed_copies(model, model.tokens) // S
    return [[[per] * S for _ in range(S)] for _ in range(model.layers)]


def _replay(routing: Routing | None, knobs: Knobs):
    g0 = build(MODEL, CLUSTER, NVLINK, knobs)
    order = {t: i for i, t in enumerate(simulate(g0).order())}
    g = build(MODEL, CLUSTER, NVLINK, knobs)
    if routing is not None:
        g = apply_routing(g, MODEL, CLUSTER, NVLINK, routing)
    return g, simulate(g, order, strict=True)


@pytest.mark.parametrize("r", [1, 2])
def test_even_routing_changes_nothing(r: int) -> None:
    knobs = Knobs.uniform(MODEL.layers, r, grad_chunk_bytes=8 * 2**20)
    _, base = _replay(None, knobs)
    g, tl = _replay(Routing.from_lists(_even()), knobs)
    assert g.graph["ranks"] == 4
    assert tl.makespan_us == pytest.approx(base.makespan_us, rel=1e-9)


def test_a_loaded_rank_slows_every_rank() -> None:
    """Rank 2's experts get 1.5x the even copies in layer 1: its expert tasks take the
    profile's time at 1.5x the FLOPs, the all-to-alls of layer 1 the time of 1.5x the
    bytes, and the step is longer; the timeline stays feasible on every rank."""
    knobs = Knobs.uniform(MODEL.layers, 2)
    copies = _even()
    per = copies[1][0][0]
    for src in range(4):  # every source sends half its copies to rank 2 (4 * per * 1.5 = 6 * per ...)
        copies[1][src] = [per // 2, per // 2, per * 2, per]
    routing = Routing.from_lists(copies)
    g, tl = _replay(routing, knobs)
    _, base = _replay(None, knobs)
    assert tl.makespan_us > base.makespan_us
    recv = routing.shares(1, work.routed_copies(MODEL, MODEL.tokens))[0]
    assert recv == pytest.approx([0.5, 0.5, 2.0, 1.0])
    for _, a in g.nodes(data=True):
        if a["kind"] == "expert_fwd" and a["layer"] == 1:
            want = [NVLINK.compute_us("expert_fwd", a["work"] * f, MODEL.shape_key()) for f in recv]
            assert a["duration_by_rank_us"] == pytest.approx(want)
        if a["kind"] == "dispatch" and a["layer"] == 1:
            assert a["duration_by_rank_us"][2] == pytest.approx(NVLINK.a2a_us("intra", a["work"] * 2.0))
        if a["layer"] == 0 and "duration_by_rank_us" in a:
            assert len(set(a["duration_by_rank_us"])) == 1  # layer 0 stays even
    check_timeline(g, tl, exact_durations=False)


@pytest.mark.parametrize("bad, msg", [
    (lambda c: c[:1], "layers"),
    (lambda c: [[row[:3] for row in layer] for layer in c], "4 x 4"),
    (lambda c: [[[-1] + row[1:] for row in layer] for layer in c], "negative"),
    (lambda c: [[[10**9] + row[1:] for row in layer] for layer in c], "T\\*k"),
])
def test_malformed_routing_is_rejected(bad, msg) -> None:
    g = build(MODEL, CLUSTER, NVLINK, Knobs.uniform(MODEL.layers, 1))
    with pytest.raises(MoeschedError, match=msg):
        apply_routing(g, MODEL, CLUSTER, NVLINK, Routing.from_lists(bad(_even())))


def test_validate_on_gloo_predicts_with_the_measured_routing(tmp_path: Path) -> None:
    """``moesched validate`` end to end on 2 gloo processes, each plan measured twice
    interleaved: one CSV row per schedule with the even and the routed prediction, the
    routing share of the step, the repeats' spread, and both traces."""
    from localhost import free_port
    m = dict(name="tiny", layers=2, d_model=64, heads=4, seq_len=32, micro_batch=4, ffn_hidden=128, experts=4,
             top_k=2, capacity_factor=None, shared_experts=0, expert_kind="swiglu", router="topk_softmax",
             dtype="fp32")
    cfg = tmp_path / "configs.json"
    cfg.write_text(json.dumps([{"name": "tiny", "model": m}]))
    # a host model and a profiled host probe far faster than any host: the probe-priced
    # prediction must scale the host costs up by probe now / probe then
    prof = json.loads((ROOT / "profiles" / "cpu-gloo-2.json").read_text())
    cost = {"alpha_us": 50.0, "per_unit_us": 0.0, "per_chunk_us": 0.0}
    prof["host"] = {"lag_us": 0.0, "kinds": {k: cost for k in ("attn_fwd", "attn_bwd", "expert_fwd")}, "shapes": {}}
    prof["meta"]["host_probe_us"] = 0.01
    ppath = tmp_path / "p.json"
    ppath.write_text(json.dumps(prof))
    out, traces = tmp_path / "v.csv", tmp_path / "traces"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "--master_addr=127.0.0.1", "-m", "moesched", "validate", "--profile", str(ppath),
           "--configs", str(cfg), "--schedules", "vanilla,flowmoe", "--out", str(out), "--traces", str(traces),
           "--steps", "1", "--warmup", "0", "--workers", "1", "--repeats", "2"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert [r["schedule"] for r in rows] == ["vanilla", "flowmoe"]
    assert len({r["runs_hash"] for r in rows}) == 2 and all(len(r["runs_hash"]) == 12 for r in rows)
    for r in rows:
        assert float(r["predicted_routed_ms"]) > 0 and float(r["max_recv_share"]) >= 1.0  # some rank gets >= mean
        assert r["repeats"] == "2" and float(r["measured_spread_pct"]) >= 0.0
        meds, probes = [float(x) for x in r["repeat_ms"].split(";")], r["repeat_probe_us"].split(";")
        assert len(meds) == 2 and len(probes) == 2 and min(meds) <= float(r["measured_ms"]) <= max(meds)
        steal, others = r["repeat_steal_pct"].split(";"), r["repeat_others_pct"].split(";")
        assert len(steal) == 2 and len(others) == 2  # a repeat shorter than a tick leaves its field empty
        assert all(0 <= float(x) <= 100 for x in steal + others if x)
        assert float(r["measured_spread_pct"]) == pytest.approx(
            (max(meds) - min(meds)) / float(r["measured_ms"]) * 100, abs=0.01)
        # the last step: its call holds its setup, its tasks and its finish
        call, setup, finish, trace = (float(r[k]) for k in ("last_call_ms", "last_setup_ms", "last_finish_ms",
                                                             "last_trace_ms"))
        assert setup > 0 and finish > 0 and trace > 0
        assert setup + trace + finish == pytest.approx(call, abs=2e-4)
        probe, f = float(r["host_probe_us"]), float(r["host_factor"])
        assert probe > 0 and f == pytest.approx(probe / 0.01, rel=1e-3)
        assert float(r["predicted_probe_ms"]) > float(r["predicted_ms"])  # host costs scaled by f > 1
    assert "with each step's measured routing" in p.stdout and "interleaved repeats" in p.stdout
    assert "with the host priced by the probe" in p.stdout
    assert len(list(traces.glob("*_predicted.json"))) == 2


@pytest.mark.parametrize("flag", [["--repeats", "0"], ["--steps", "0"], ["--warmup", "-1"]])
def test_validate_rejects_bad_counts(flag, capsys) -> None:
    from moesched.cli import main
    argv = ["validate", "--profile", "profiles/cpu-gloo-2.json", "--configs", "docs/validation_configs.json",
            "--out", "/nonexistent/v.csv", *flag]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least" in err[0]


def test_validate_skew_is_checked_before_any_work(tmp_path: Path, capsys) -> None:
    """--skew sets deepseek_v3's selection bias: a negative value, or a configuration routed
    otherwise, is one line and exit 2 (before torch or torchrun are needed)."""
    from moesched.cli import main
    for skew, msg in (("0.1", "route otherwise"), ("-1", ">= 0")):
        argv = ["validate", "--profile", "profiles/cpu-gloo-2.json", "--configs", "docs/validation_configs.json",
                "--out", str(tmp_path / "v.csv"), "--skew", skew]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("moesched: error: --skew") and msg in err[0]


def test_validate_lists_are_checked_before_the_process_group(tmp_path: Path, capsys) -> None:
    """An unknown or empty --schedules, a bad --issue, or a --traces that is a file: one line
    and exit 2 outside torchrun too, so every rank of a job would say it before starting."""
    from moesched.cli import main
    (tmp_path / "file").write_text("x")
    for extra, msg in ((["--schedules", "vanilla,nope"], "--schedules"), (["--schedules", ","], "--schedules"),
                       (["--issue", "both"], "--issue"), (["--traces", str(tmp_path / "file")], "--traces")):
        argv = ["validate", "--profile", "profiles/cpu-gloo-2.json", "--configs", "docs/validation_configs.json",
                "--out", str(tmp_path / "v.csv"), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"moesched: error: {msg}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_validate_skewed_steps_are_priced_under_their_own_load(tmp_path: Path) -> None:
    """``--skew`` on a deepseek_v3 model: the executed steps are imbalanced (recorded
    per-expert load), and the row replays the plan under that load."""
    from localhost import free_port
    m = dict(name="tiny-ds", layers=2, d_model=64, heads=4, seq_len=32, micro_batch=4, ffn_hidden=128, experts=8,
             top_k=2, capacity_factor=None, shared_experts=0, expert_kind="swiglu", router="deepseek_v3",
             dtype="fp32")
    cfg = tmp_path / "configs.json"
    cfg.write_text(json.dumps([{"name": "tiny-ds", "model": m}]))
    loads = []
    for skew in ("0", "0.3"):
        out = tmp_path / f"v{skew}.csv"
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "--master_addr=127.0.0.1", "-m", "moesched", "validate", "--profile", "profiles/cpu-gloo-2.json",
               "--configs", str(cfg), "--schedules", "vanilla", "--out", str(out), "--steps", "1", "--warmup", "0",
               "--workers", "1", "--skew", skew]
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
        (row,) = list(csv.DictReader(out.open()))
        assert float(row["predicted_uneven_ms"]) > 0 and "per-expert load" in p.stdout
        loads.append(float(row["max_expert_load"]))
    assert loads[0] < 2.0 < loads[1]   # expert 0 and 1 take most of the top-2 picks
