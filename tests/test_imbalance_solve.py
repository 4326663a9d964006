"""The solver under a routing distribution (moesched.imbalance_solve): the plan chosen for
the distribution is never slower than the solver's even-routing plan under the same steps,
on drawn Zipf and Dirichlet distributions and on every shipped trace; and bad traces are
refused by simulate and solve with one line, exit 2."""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from moesched.cluster import Cluster
from moesched.imbalance import expected
from moesched.imbalance_plans import sampled_loads
from moesched.imbalance_solve import EVEN, Choice, choose, chosen_plan
from moesched.models import PRESETS, MoEModel
from moesched.plan import Plan, from_timeline
from moesched.profile import Profile
from moesched.routing_gen import generate, parse_spec

ROOT = Path(__file__).resolve().parent.parent
PROFILE = Profile.load("h200x4-nvlink")
CLUSTER = Cluster(1, 4)
MIXTRAL = dataclasses.replace(PRESETS["Mixtral-8x7B"], layers=4)


@functools.lru_cache(maxsize=None)
def even_plan(model: MoEModel) -> Plan:
    """The solver's plan for even routing (as ``moesched solve`` writes it)."""
    from moesched.solve import solve
    r = solve(model, CLUSTER, PROFILE, 5)
    return from_timeline("moesched", model, CLUSTER, r.schedule.knobs, r.evaluation.timeline, PROFILE)


def check_never_slower(model: MoEModel, spec: str, samples: int, search: bool, chunks: bool = False) -> Choice:
    """Choose under ``spec``; the written plan, replayed under the same steps, is no slower
    than the even plan (and is what was scored)."""
    plan = even_plan(model)
    loads = sampled_loads(spec, model, CLUSTER, samples)
    ch = choose(model, CLUSTER, PROFILE, plan.knobs, list(plan.order), loads, 5, search=search, chunk_loads=chunks)
    even = expected(model, CLUSTER, PROFILE, plan.knobs, list(plan.order), loads, chunks)
    assert ch.candidates[0] is ch.even and ch.even.name == EVEN
    assert ch.even.result.mean_us == pytest.approx(even.mean_us, rel=1e-12)
    assert all(ch.best.result.mean_us <= c.result.mean_us for c in ch.candidates)
    out = chosen_plan(ch, model, CLUSTER, PROFILE, plan, spec)
    got = expected(model, CLUSTER, PROFILE, out.knobs, list(out.order), loads, chunks)
    assert got.mean_us == pytest.approx(ch.best.result.mean_us, rel=1e-12)
    assert got.mean_us <= even.mean_us * (1 + 1e-12) and ch.gain >= 0
    return ch


SPECS = st.one_of(
    st.builds(lambda s, d, seed: f"zipf:{s:.3f},drift={d:.3f},seed={seed}",
              st.floats(0.0, 2.0), st.floats(0.0, 0.5), st.integers(0, 1000)),
    st.builds(lambda a, seed: f"dirichlet:{a:.3f},seed={seed}", st.floats(0.05, 5.0), st.integers(0, 1000)))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=SPECS, samples=st.integers(1, 4), chunks=st.booleans())
def test_never_slower_on_drawn_distributions(spec: str, samples: int, chunks: bool) -> None:
    parse_spec(spec)
    check_never_slower(MIXTRAL, spec, samples, search=False, chunks=chunks)


def _model_for(trace: str) -> MoEModel:
    """A 4-layer preset with the trace's experts (Mixtral's shape with 4 experts for the E4 trace)."""
    experts = json.loads((ROOT / trace).read_text().splitlines()[0])["experts"]
    if experts == 16:
        return dataclasses.replace(PRESETS["GPT2-XL-MoE"], layers=4)
    return dataclasses.replace(MIXTRAL, experts=experts)


SHIPPED = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "routing").glob("*.jsonl"))


@pytest.mark.parametrize("source", SHIPPED + ["zipf:1.0", "zipf:1.2", "zipf:1.5"])
def test_never_slower_on_shipped_traces_and_zipf(source: str) -> None:
    model = _model_for(source) if source.endswith(".jsonl") else MIXTRAL
    spec = str(ROOT / source) if source.endswith(".jsonl") else source
    ch = check_never_slower(model, spec, 4, search=True)
    assert len(ch.candidates) > len(ch.policies) + 1


def test_solve_writes_the_chosen_plan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from moesched.cli import main
    out = tmp_path / "p.json"
    assert main(["solve", "--model", "Mixtral-8x7B", "--layers", "4", "--profile", "h200x4-nvlink",
                 "--routing", "zipf:1.5,drift=0.2", "--routing-samples", "3", "--time-limit", "5",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    plan = Plan.load(out)
    plan.validate()
    loads = sampled_loads("zipf:1.5,drift=0.2", plan.model, plan.cluster, 3)
    got = expected(plan.model, plan.cluster, PROFILE, plan.knobs, list(plan.order), loads)
    assert f"mean {got.mean_us / 1e3:.3f} ms" in text.split("chosen for the distribution:")[1]


def _bad_trace(tmp_path: Path, kind: str) -> str:
    """A trace for GPT2-Tiny-MoE (16 experts, EP 2, 2 layers) spoiled as ``kind`` says."""
    lines = generate(parse_spec("zipf:1.2"), 2, 16, 2, 64, 2, 3).to_jsonl().splitlines()
    head, rec = json.loads(lines[0]), json.loads(lines[1])
    if kind == "version":
        head["version"] = 2
    elif kind == "negative":
        rec["copies"][1][3] = -rec["copies"][1][3] - 1
    elif kind == "experts":        # a trace of 8 experts: another model's shape
        head["experts"] = 8
        for i in range(1, len(lines)):
            r = json.loads(lines[i])
            r["copies"] = [row[:8] for row in r["copies"]]
            lines[i] = json.dumps(r)
        rec = json.loads(lines[1])
    elif kind == "layers":         # 5 layers: the model's 12 are not a multiple
        head["layers"] = 5
    elif kind == "width":          # a record narrower than the header's experts
        rec["copies"] = [row[:-1] for row in rec["copies"]]
    lines[0], lines[1] = json.dumps(head), json.dumps(rec)
    path = tmp_path / f"{kind}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("cmd", ["simulate", "solve"])
@pytest.mark.parametrize("kind, msg", [("version", "version"), ("negative", "negative"),
                                       ("experts", "a trace of this model is needed"), ("layers", "layers"),
                                       ("width", "copies must be 2 x 16")])
def test_bad_traces_one_line_exit_2(cmd: str, kind: str, msg: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    from moesched.cli import main
    extra = ["--out", str(tmp_path / "p.json")] if cmd == "solve" else ["--schedules", "vanilla"]
    assert main([cmd, "--model", "GPT2-Tiny-MoE", "--profile", "analytic-h200x4-nvlink", *extra,
                 "--routing", _bad_trace(tmp_path, kind)]) == 2
    cap = capsys.readouterr()
    assert cap.err.startswith("moesched: error:") and msg in cap.err and cap.err.count("\n") == 1
    assert not (tmp_path / "p.json").exists()


def test_bad_trace_through_the_entry_point(tmp_path: Path) -> None:
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "moesched", "simulate", "--model", "GPT2-Tiny-MoE", "--profile",
                        "analytic-h200x4-nvlink", "--routing", _bad_trace(tmp_path, "negative")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("moesched: error:") and r.stderr.count("\n") == 1


@pytest.mark.parametrize("argv", [["solve", "--out", "TRACE"], ["simulate", "--trace", "TRACE"]])
def test_output_may_not_overwrite_the_routing_trace(argv: list[str], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    from moesched.cli import main
    trace = tmp_path / "r.jsonl"
    trace.write_text(generate(parse_spec("zipf:1.2"), 2, 16, 2, 64, 2, 3).to_jsonl())
    before = trace.read_bytes()
    assert main([argv[0], "--model", "GPT2-Tiny-MoE", "--profile", "analytic-h200x4-nvlink", "--routing", str(trace),
                 *[str(trace) if a == "TRACE" else a for a in argv[1:]]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the same file as --routing" in err
    assert trace.read_bytes() == before
