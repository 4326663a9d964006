"""The profile's ``dep`` section (moesched.depcurves): ``moesched profile --inference`` times
the DEP forward tasks (executor.profiling.dep), :func:`moesched.findep_profile.profile_times`
prices from them (price source ``dep``) and falls back to the training curves without them,
and a malformed section is refused in one line."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from localhost import free_port

from moesched.cli import main
from moesched.costs.build import dep_curves, refit
from moesched.depcurves import DepCurves, dep_key
from moesched.errors import MoeschedError
from moesched.findep_profile import price_sources, profile_times
from moesched.models import PRESETS
from moesched.profile import Cost, Profile

ROOT = Path(__file__).resolve().parent.parent
DS = PRESETS["DeepSeek-V2-Lite"]


def _with_dep(prof: Profile, shapes: dict) -> Profile:
    return Profile.from_dict(dict(prof.to_dict(), dep=shapes))


def _curve(x0: float, t0: float, x1: float, t1: float) -> dict:
    return Cost(0.0, (t1 - t0) / (x1 - x0), ((x0, t0), (x1, t1))).to_dict()


def _ds_dep() -> dict:
    """Hand-made DEP curves of DeepSeek-V2-Lite (S = 4096): attention, shared, El = 32."""
    S, k = DS.seq_len, DS.top_k
    return {DS.shape_key(): {"dep_attn": _curve(S, 1000.0, 8 * S, 5000.0),
                             "dep_shared": _curve(S, 200.0, 8 * S, 1000.0),
                             "dep_expert@El32": _curve(k * S, 3000.0, 8 * k * S, 20000.0)}}


def test_profile_times_prices_from_the_dep_curves_and_falls_back_without() -> None:
    old = Profile.load("h200x4-nvlink")
    assert old.dep is None and "dep" not in old.to_dict()  # old profiles: no section, same digest
    prof = _with_dep(old, _ds_dep())
    assert prof.dep is not None and Profile.from_dict(prof.to_dict()).dep == prof.dep
    S, k = DS.seq_len, DS.top_k
    t = profile_times(DS, prof, 2, 2)(2, 1)  # m_a = 2: 2 S tokens, 2 k S copies on an expert GPU
    c = prof.dep.shapes[DS.shape_key()]
    assert t.attn == pytest.approx(c["dep_attn"](2 * S) / 1e3) and t.attn * 1e3 == pytest.approx(1000 + 4000 / 7)
    assert t.shared == pytest.approx(c["dep_shared"](2 * S) / 1e3)
    assert t.expert == pytest.approx(c["dep_expert@El32"](2 * k * S) / 1e3)
    assert price_sources(DS, prof, 2) == {"attn": "dep", "shared": "dep", "expert": "dep"}
    before = profile_times(DS, old, 2, 2)(2, 1)
    assert t.comm == before.comm  # transfers: the cluster model either way
    # El = 64 (eg = 1) has no curve: the expert task falls back to the training curves
    t1, b1 = profile_times(DS, prof, 1, 1)(2, 1), profile_times(DS, old, 1, 1)(2, 1)
    assert t1.expert == b1.expert and t1.attn != b1.attn
    src = price_sources(DS, prof, 1)
    assert src["attn"] == "dep" and src["expert"] == price_sources(DS, old, 1)["expert"] != "dep"
    # another shape (S = 1024) is not the measured one: all from the training curves
    m = replace(DS, seq_len=1024)
    assert profile_times(m, prof, 2, 2)(1, 1) == profile_times(m, old, 2, 2)(1, 1)
    assert "dep" not in price_sources(m, prof, 2).values()


@pytest.mark.parametrize("dep, msg", [
    ([], "dep must map shape keys"),
    ({"M1": {}}, "dep must map shape keys"),
    ({"M1": {"dep_expert@8": _curve(1, 1, 2, 2)}}, "dep.M1 has unknown curves ['dep_expert@8']"),
    ({"M1": {"attn_fwd": _curve(1, 1, 2, 2)}}, "dep.M1 has unknown curves ['attn_fwd']"),
    ({"M1": {"dep_attn": {"alpha_us": 1.0, "beta_us_per_unit": 1.0}}}, "dep.M1.dep_attn needs at least 2"),
    ({"M1": {"dep_attn": {"alpha_us": 1.0, "beta_us_per_unit": -1.0, "points": [[1, 1], [2, 2]]}}},
     "dep.M1.dep_attn has a negative cost"),
    ({"M1": {"dep_shared": {"alpha_us": "x", "beta_us_per_unit": 1.0}}}, "dep.M1.dep_shared.alpha_us"),
])
def test_a_malformed_dep_section_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        dep: object, msg: str) -> None:
    d = dict(Profile.load("h200x4-nvlink").to_dict(), dep=dep)
    with pytest.raises(MoeschedError, match="^profile: .*" + re.escape(msg)):
        Profile.from_dict(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    assert main(["profile", "--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moesched: error: profile {path}: dep") and err.count("\n") == 1 and msg[:12] in err


def test_dep_curves_and_keys() -> None:
    rows = [("S1", "dep_attn", 512, 10.0), ("S1", "dep_attn", 1024, 18.0), ("S1", "dep_expert@El4", 1024, 5.0),
            ("S1", "dep_expert@El4", 2048, 9.0), ("S1", "dep_shared", 512, 3.0)]  # one point: no curve
    dep, fits = dep_curves(rows)
    assert set(dep.shapes["S1"]) == {"dep_attn", "dep_expert@El4"} and set(fits) == {"dep.S1.dep_attn",
                                                                                      "dep.S1.dep_expert@El4"}
    assert dep.us("S1", "dep_attn", 768) == pytest.approx(14.0) and dep.us("S1", "dep_shared", 512) is None
    assert dep.us("S1", "dep_expert", 1536, 4) == pytest.approx(7.0) and dep.us("S1", "dep_expert", 1536, 8) is None
    assert DepCurves.from_dict(dep.to_dict()) == dep
    assert dep_key("dep_expert", 16) == "dep_expert@El16" and dep_key("dep_attn") == "dep_attn"
    for bad in (("dep_expert", None), ("dep_expert", 0), ("attn_fwd", None)):
        with pytest.raises(ValueError):
            dep_key(*bad)


def _small_models() -> list:
    """benchmarks/gpu_findep.py's --small shapes of DeepSeek-V2-Lite (shared experts) and Mixtral-8x7B."""
    spec = importlib.util.spec_from_file_location("gpu_findep", ROOT / "benchmarks" / "gpu_findep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return [mod.small_model(PRESETS[n]) for n in ("DeepSeek-V2-Lite", "Mixtral-8x7B")]


@pytest.mark.slow
def test_profiler_writes_dep_curves_that_price_gpu_findep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One gloo process, --quick --inference on gpu_findep's --small shapes; then
    gpu_findep --cpu --small on that profile prices every task from its own curve."""
    models = _small_models()
    cfg = tmp_path / "small.json"
    cfg.write_text(json.dumps([{"name": m.name, "model": m.to_dict()} for m in models]))
    out = tmp_path / "p.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
                          f"--master_port={free_port()}", "-m", "moesched", "profile", "--out", str(out), "--quick",
                          "--inference", "--models", str(cfg)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    prof = Profile.load(out)
    assert prof.dep is not None and set(prof.dep.shapes) == {m.shape_key() for m in models}
    for m in models:
        by, S = prof.dep.shapes[m.shape_key()], m.seq_len
        want = {"dep_attn"} | ({"dep_shared"} if m.shared_experts else set()) | \
            {f"dep_expert@El{m.experts // eg}" for eg in (1, 2, 4, 8)}
        assert set(by) == want, m.name
        assert [x for x, _ in by["dep_attn"].points] == [S, 2 * S]                   # m_a = 1, 2
        assert [x for x, _ in by["dep_expert@El4"].points] == [m.top_k * S, 2 * m.top_k * S]
        assert all(t > 0 for c in by.values() for _, t in c.points)
    assert len(prof.meta["dep"]["samples"]) == sum(len(c.points) for by in prof.dep.shapes.values()
                                                   for c in by.values())
    assert refit(prof).dep == prof.dep
    assert main(["profile", "--check", str(out)]) == 0
    assert f"dep.{models[0].shape_key()}.dep_attn" in capsys.readouterr().out
    run = subprocess.run([sys.executable, "benchmarks/gpu_findep.py", "--cpu", "--small", "--presets",
                          "DeepSeek-V2-Lite,Mixtral-8x7B", "--profile", str(out), "--out", str(tmp_path / "f")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "f" / "findep_tasks.csv")))
    assert {r["task"] for r in rows} == {"attn", "shared", "expert"}
    assert {r["price_source"] for r in rows} == {"dep"}
