"""The command line, in-process (moesched.cli.main) and as ``python -m moesched``."""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moesched import schedules
from moesched.cli import main
from moesched.models import PRESETS, MoEModel
from moesched.network import NETWORKS_DIR
from moesched.profile import PROFILES_DIR

ROOT = Path(__file__).resolve().parent.parent
NVLINK = PROFILES_DIR / "analytic-h200x4-nvlink.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cli(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "moesched", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def assert_one_line_error(rc: int, err: str) -> None:
    assert rc == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moesched: error:"), err


def test_models(capsys: pytest.CaptureFixture) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["name", "layers", "d_model"] and "params (B)" in lines[0]
    for name in PRESETS:
        assert any(line.startswith(name + " ") for line in lines)
    mixtral = next(line for line in lines if line.startswith("Mixtral-8x7B "))
    assert float(mixtral.split()[-1]) == pytest.approx(46.7, abs=0.01)  # Mixtral-8x7B-v0.1's 46.7 B
    assert mixtral.split()[4] == "8"  # key/value heads
    widths = {len(line) for line in lines[2:2 + len(PRESETS)]}
    assert len(widths) == 1  # aligned: the last column is right-aligned


def test_schedules(capsys: pytest.CaptureFixture) -> None:
    assert main(["schedules"]) == 0
    out = capsys.readouterr().out
    for name in schedules.POLICIES:
        mod = schedules.get(name)
        assert any(line.startswith(name) for line in out.splitlines())
        assert " ".join(mod.PAPER.split()) in out and " ".join(mod.SUMMARY.split()) in out


def test_simulate_in_process(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    trace, png = tmp_path / "t.json", tmp_path / "g.png"
    rc = main(["simulate", "--model", "GPT2-Tiny-MoE", "--profile", str(NVLINK), "--schedules", "all",
               "--trace", str(trace), "--png", str(png)])
    cap = capsys.readouterr()
    assert rc == 0 and cap.err == ""
    out = cap.out
    assert "analytic-h200x4-nvlink" in out and "analytic" in out and "cluster 1x4" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in schedules.POLICIES}
    assert set(rows) == set(schedules.POLICIES)
    assert rows["vanilla"][2] == "1.00x"
    steps = {n: float(r[1]) for n, r in rows.items()}
    best = min(steps, key=steps.get)
    assert f"trace of {best} written to {trace}" in out
    d = json.loads(trace.read_text())
    assert any(e["ph"] == "X" for e in d["traceEvents"])
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_simulate_adds_vanilla_baseline_and_uses_profile_layout(capsys: pytest.CaptureFixture) -> None:
    assert main(["simulate", "--model", "GPT2-Tiny-MoE", "--profile", "analytic-h200x4-2nodes",
                 "--schedules", "lina"]) == 0
    out = capsys.readouterr().out
    assert "cluster 2x2" in out and "vanilla (baseline)" in out and "fastest: lina" in out


def test_simulate_layers_keeps_the_first_layers(capsys: pytest.CaptureFixture) -> None:
    def step_ms(*extra: str) -> float:
        assert main(["simulate", "--model", "Mixtral-7B-FSMoE", "--schedules", "vanilla", *extra]) == 0
        return float(re.search(r"fastest: vanilla \(([0-9.]+) ms", capsys.readouterr().out).group(1))
    full, two = step_ms(), step_ms("--layers", "2")
    assert MoEModel.from_name("Mixtral-7B-FSMoE").layers > 2 and two < 0.6 * full


def test_simulate_warns_when_states_exceed_memory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = json.loads(NVLINK.read_text())
    d["hardware"]["gpu_memory_bytes"] = 10**6
    small = tmp_path / "small-gpu.json"
    small.write_text(json.dumps(d))
    assert main(["simulate", "--model", "GPT2-Tiny-MoE", "--profile", str(small), "--schedules", "vanilla"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moesched: warning:") and "binding term" in err[0]


def test_simulate_subprocess(tmp_path: Path) -> None:
    trace, png = tmp_path / "t.json", tmp_path / "g.png"
    r = cli("simulate", "--model", "Mixtral-7B-FSMoE", "--schedules", "vanilla,flowmoe",
            "--trace", str(trace), "--png", str(png))
    assert r.returncode == 0, r.stderr
    assert "profile:" in r.stdout and "fastest:" in r.stdout and "written to" in r.stdout
    json.loads(trace.read_text())
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_models_and_schedules_subprocess() -> None:
    r = cli("models")
    assert r.returncode == 0 and "Qwen3-30B-A3B" in r.stdout and r.stderr == ""
    r = cli("schedules")
    assert r.returncode == 0 and all(n in r.stdout for n in schedules.POLICIES)


def bad_inputs(tmp: Path) -> dict[str, list[str]]:
    (tmp / "malformed.json").write_text('{"format": "moesched.profile",')
    nointra = json.loads((NETWORKS_DIR / "dgx-h200.json").read_text())
    nointra["intra"] = None
    (tmp / "nointra.json").write_text(json.dumps(nointra))
    sim = ["simulate", "--model", "GPT2-Tiny-MoE", "--schedules", "vanilla"]
    return {
        "unknown model": ["simulate", "--model", "GPT-9"],
        "bad cluster": sim + ["--cluster", "2by2"],
        "cluster not matching profile": sim + ["--cluster", "2x8", "--network", str(tmp / "nointra.json")],
        "malformed profile": sim + ["--profile", str(tmp / "malformed.json")],
        "missing profile": sim + ["--profile", str(tmp / "missing.json")],
        "unknown schedule": ["simulate", "--model", "GPT2-Tiny-MoE", "--schedules", "vanilla,fastmoe"],
        "ep not dividing world": sim + ["--cluster", "1x4/ep3"],
        "missing flag": ["simulate"],
        "unknown command": ["frobnicate"],
        "empty schedule list": ["simulate", "--model", "GPT2-Tiny-MoE", "--schedules", ","],
        "blank schedule list": ["simulate", "--model", "GPT2-Tiny-MoE", "--schedules", " "],
        "zero layers": ["solve", "--model", "GPT2-Tiny-MoE", "--layers", "0", "--out", str(tmp / "p.json")],
        "too many layers": ["solve", "--model", "GPT2-Tiny-MoE", "--layers", "100000", "--out", str(tmp / "p.json")],
        "nan time limit": ["solve", "--model", "GPT2-Tiny-MoE", "--time-limit", "nan", "--out", str(tmp / "p.json")],
        "infinite time limit": ["solve", "--model", "GPT2-Tiny-MoE", "--time-limit", "inf", "--out",
                                str(tmp / "p.json")],
        "zero sweep workers": ["sweep", "--grid", "schemoe675", "--limit", "1", "--workers", "0"],
        "empty profile path": sim + ["--profile", ""],
        "no command": [],
        "empty cluster": sim + ["--cluster", ""],
    }


@pytest.mark.parametrize("case", [
    "unknown model", "bad cluster", "cluster not matching profile", "malformed profile", "missing profile",
    "unknown schedule", "ep not dividing world", "missing flag", "unknown command", "empty schedule list",
    "blank schedule list", "zero layers", "too many layers", "nan time limit", "infinite time limit",
    "zero sweep workers", "empty profile path", "no command", "empty cluster"])
def test_bad_input_in_process(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = bad_inputs(tmp_path)[case]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors exit from inside parse_args
        rc = int(e.code)
    cap = capsys.readouterr()
    assert_one_line_error(rc, cap.err)
    assert cap.out == ""  # refused before anything was printed
    assert sorted(tmp_path.iterdir()) == [tmp_path / "malformed.json", tmp_path / "nointra.json"]


def test_default_profile_name_from_help_resolves(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`--help` prints the default profile as a file name: that name works, from any folder."""
    from moesched.profile import default_profile_path
    monkeypatch.chdir(tmp_path)
    name = default_profile_path().name
    assert name.endswith(".json")
    assert main(["simulate", "--model", "GPT2-Tiny-MoE", "--profile", name, "--schedules", "vanilla"]) == 0
    assert main(["simulate", "--model", "GPT2-Tiny-MoE", "--profile", name[:-5], "--schedules", "vanilla"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("case", ["unknown model", "bad cluster", "malformed profile", "missing profile",
                                  "unknown schedule"])
def test_bad_input_subprocess(case: str, tmp_path: Path) -> None:
    r = cli(*bad_inputs(tmp_path)[case])
    assert_one_line_error(r.returncode, r.stderr)
    assert r.stdout == ""


@pytest.mark.parametrize("cluster,ep", [("32x8", 8), ("3x4", 4), ("1x6", 2)])
def test_cluster_without_ep_that_experts_do_not_divide_names_one_that_does(
        cluster: str, ep: int, capsys: pytest.CaptureFixture) -> None:
    """EP over every rank (no /epN) where the experts do not divide: one line naming an EP
    size that does; that size simulates."""
    assert main(["simulate", "--model", "Mixtral-8x7B", "--layers", "1", "--cluster", cluster]) == 2
    cap = capsys.readouterr()
    assert_one_line_error(2, cap.err)
    assert cap.out == "" and f"e.g. --cluster {cluster}/ep{ep}," in cap.err, cap.err
    assert main(["simulate", "--model", "Mixtral-8x7B", "--layers", "1", "--cluster", f"{cluster}/ep{ep}",
                 "--schedules", "vanilla"]) == 0
