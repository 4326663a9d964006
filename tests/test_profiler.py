"""executor.profiling end to end on gloo: 2 processes under real torchrun, tiny grids; the
``profile`` command as a plug-in of the moesched CLI, with and without torch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from localhost import free_port

from moesched.cli import main
from moesched.costs.build import refit
from moesched.profile import ALL_COMPUTE_KINDS, COMPUTE_KINDS, Profile

ROOT = Path(__file__).resolve().parent.parent


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
            "-m", "moesched", "profile", "--out", str(out), "--quick", *extra]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
@pytest.mark.parametrize("emulate", [None, 2])
def test_profile_end_to_end(tmp_path: Path, emulate: int | None, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.json"
    out.write_text("previous profile\n")  # replaced atomically on success
    extra = ["--emulate-nodes", str(emulate), "--comm-passes", "2"] if emulate else ["--host-steps", "2"]
    t0 = time.time()
    res = subprocess.run(_cmd(out, *extra), cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert time.time() - t0 < 120
    prof = Profile.load(out)
    assert prof.kind == "measured"
    assert set(prof.compute) == set(ALL_COMPUTE_KINDS)   # the loss task is measured too
    scopes = {"intra"} if emulate is None else {"inter", "world"}
    assert (prof.nodes, prof.gpus_per_node) == ((1, 2) if emulate is None else (2, 1))
    for op in ("all_to_all", "all_reduce", "all_gather", "reduce_scatter"):
        assert set(prof.comm[op]) == scopes
        for cost in prof.comm[op].values():
            assert len(cost.points) >= 2 and cost.r2 is not None
    assert prof.shapes, "measured model shapes keep their own curves"
    for by in prof.shapes.values():
        for cost in by.values():
            assert len(cost.points) >= 2 and all(x > 0 and t > 0 for x, t in cost.points)
    for cost in prof.compute.values():  # the fallback for unmeasured shapes: one line per kind
        assert cost.alpha_us >= 0 and cost.beta_us_per_unit >= 0 and cost.r2 is not None
    assert prof.compute_slowdown >= 1.0 and prof.comm_slowdown >= 1.0
    assert set(prof.interference_by_op) == {"all_reduce"} and min(prof.interference_by_op["all_reduce"]) >= 1.0
    assert prof.meta["interference_all_reduce"]["op"] == "all_reduce"
    meta = prof.meta
    assert meta["replay"]["n"] > 0 and meta["replay"]["mean_err_pct"] is not None
    assert meta["world_size"] == 2 and "torchrun --nproc_per_node=2 -m moesched profile" in meta["command"]
    assert meta["env"]["NCCL_NVLS_ENABLE"] == "0"
    assert set(meta["overhead_us"]) >= set(COMPUTE_KINDS)
    # every collective point timed in several passes, its repeatability kept and summarised
    assert set(meta["comm_spread_pct"]) == {f"{op}.{s}@{b}" for op, s, b, _, _ in meta["samples"]["comm"]}
    assert all(v >= 0 for v in meta["comm_spread_pct"].values())
    passes = 2 if emulate else 3  # --comm-passes, else 3: each pass's median kept, the point their pool's
    assert meta["grid"]["comm_passes"] == passes and set(meta["comm_pass_us"]) == set(meta["comm_spread_pct"])
    for op, s, b, us, _ in meta["samples"]["comm"]:
        meds = meta["comm_pass_us"][f"{op}.{s}@{b}"]
        assert len(meds) == passes and all(m > 0 for m in meds)
        assert meta["comm_spread_pct"][f"{op}.{s}@{b}"] == pytest.approx(100 * (max(meds) - min(meds)) / us, abs=0.02)
    assert meta["replay"]["comm_replay_spread_mean_pct"] is not None
    if emulate is None:  # host issue costs from real executor steps (moesched.host)
        assert prof.host is not None and {"attn_fwd", "attn_bwd", "expert_fwd", "dispatch", "combine",
                                          "grad_ar"} <= set(prof.host.kinds)
        sampled = {kind for _, kind, _, _, _ in meta["samples"]["host"]}
        assert set(prof.host.kinds) == sampled  # one fit per measured kind
        # the step around its tasks, at the configured layers and at one layer: x = the
        # parameter bytes of one rank, those of one layer's model the smaller
        steps = [(x, us) for _, kind, x, _, us in meta["samples"]["host"] if kind == "step_setup"]
        assert len({x for x, _ in steps}) == 2 and all(us > 0 for _, us in steps)
        assert meta["samples"]["host_x_unit"] == prof.host.x_unit == "work"
        assert {"step_setup", "step_finish"} <= sampled
        assert refit(prof).host == prof.host    # --refit rebuilds the same host costs from meta
        assert set(prof.host.shapes) == set(prof.shapes)
        assert meta["samples"]["host"] and Profile.from_dict(prof.to_dict()).host == prof.host
        # all-to-alls timed inside those steps price the measured shape (intra: one node)
        assert meta["samples"]["a2a"] and all(by.get("all_to_all@intra") for by in prof.shapes.values())
        assert refit(prof).shapes == prof.shapes
        # the two calibration passes (--host-steps 2) interleave every plan: each plan timed
        # once per pass, the passes' spread kept, the probe the slowest rank's median of passes
        spread = meta["host_pass_spread_pct"]
        assert 0 <= spread["mean"] <= spread["max"] and meta["host_probe_us"] > 0
    else:
        assert prof.host is None  # the CPU default: no host calibration
    # operator corrections fitted against the current recipe, with the models to refit them
    from moesched.ops import RECIPE
    assert prof.ops is not None and prof.ops.recipe == RECIPE and set(meta["model_configs"]) == set(meta["models"])
    assert refit(prof).ops.correction == prof.ops.correction
    assert not list(tmp_path.glob(".p.json.*"))  # no temporary file left behind
    capsys.readouterr()
    assert main(["profile", "--check", str(out)]) == 0
    text = capsys.readouterr().out
    assert "compute.expert_fwd" in text and "replay on" in text and "repeatability of the collectives" in text


@pytest.mark.slow
def test_interrupted_run_leaves_old_profile(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    old = json.dumps({"old": True})
    out.write_text(old)
    proc = subprocess.Popen(_cmd(out), cwd=ROOT, env=_env(tmp_path), stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait until measuring has started, then interrupt
            if line.startswith("profiling:"):
                break
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert out.read_text() == old
    assert not list(tmp_path.glob(".p.json.*"))


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    assert main(["profile"]) == 2
    assert main(["profile", "--check", str(tmp_path / "missing.json")]) == 2
    assert main(["profile", "--out", str(tmp_path / "p.json")]) == 2  # not under torchrun
    assert main(["profile", "--out", str(tmp_path / "p.json"), "--host-steps", "-1"]) == 2
    for bad in ("0", "65"):
        assert main(["profile", "--out", str(tmp_path / "p.json"), "--comm-passes", bad]) == 2
    err = capsys.readouterr().err
    assert "--comm-passes must be 1 to 64, got 0" in err
    assert "torchrun" in err and all(line.startswith("moesched: error:") for line in err.strip().splitlines())
    assert not (tmp_path / "p.json").exists()


def test_shipped_cpu_profile_checks(capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "profiles" / "cpu-gloo-2.json"
    if not path.exists():
        pytest.skip("profiles/cpu-gloo-2.json not produced yet")
    prof = Profile.load(path)
    assert (prof.nodes, prof.gpus_per_node, prof.kind) == (1, 2, "measured")
    assert main(["profile", "--check", str(path)]) == 0


def test_bench_shape_and_flops() -> None:
    from executor.profiling.bench import bench_shape, task_flops
    from moesched.models import MoEModel

    m = MoEModel.from_name("Mixtral-8x7B")
    s = bench_shape(m, "shared_fwd", 6144)
    assert s.seq_len * s.micro_batch == 6144 and s.seq_len == 2048 and s.shared_experts == 1
    assert bench_shape(m, "attn_fwd", 256).seq_len == 256
    assert bench_shape(m, "attn_fwd", 256).shared_experts == 0
    assert task_flops("shared_bwd", s, 6144) == 2 * task_flops("shared_fwd", s, 6144) > 0
    assert task_flops("expert_dw", s, 6144) == task_flops("expert_fwd", s, 6144)


# ---- the profile command as a plug-in of the moesched CLI -------------------------------------
NO_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NoTorch())
"""


def test_torch_side_commands_come_from_the_entry_point_group() -> None:
    from moesched.cli import plugin_commands
    plugins = plugin_commands()
    assert {n: plugins[n].value for n in ("profile", "validate")} == \
        {"profile": "executor.commands.profile", "validate": "executor.commands.validate"}


def test_a_plugin_that_needs_torch_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The entry point's module fails to import for want of torch: the command stays listed
    and answers one line, exit 2, whatever its arguments."""
    from importlib.metadata import EntryPoint
    from moesched import cli
    (tmp_path / "needs_torch_plugin.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "plugin_commands",
                        lambda: {"profile": EntryPoint("profile", "needs_torch_plugin", cli.PLUGIN_GROUP)})
    assert main(["profile", "--out", str(tmp_path / "p.json"), "--quick"]) == 2
    assert capsys.readouterr().err == "moesched: error: the profile command needs torch: pip install torch\n"
    assert main(["models"]) == 0  # the other commands are unaffected
    assert not (tmp_path / "p.json").exists()


def test_an_unregistered_torch_command_says_so(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Metadata without the entry points (an old install): ``validate`` is still listed and
    answers one line, exit 2."""
    from moesched import cli
    monkeypatch.setattr(cli, "plugin_commands", lambda: {})
    assert main(["validate", "--profile", "p", "--configs", "c", "--out", "o.csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moesched: error: the validate command is not installed") and err.count("\n") == 1


def test_profile_without_torch(tmp_path: Path) -> None:
    """With torch not importable, --check still works and measuring is refused in one line."""
    (tmp_path / "sitecustomize.py").write_text(NO_TORCH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    run = lambda *a: subprocess.run([sys.executable, "-m", "moesched", "profile", *a], cwd=tmp_path, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    res = run("--check", str(ROOT / "profiles" / "cpu-gloo-2.json"))
    assert res.returncode == 0 and "fits," in res.stdout, res.stderr
    res = run("--out", str(tmp_path / "p.json"))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("moesched: error: profile: measuring needs torch: pip install torch")
    assert len(res.stderr.splitlines()) == 1
    assert not (tmp_path / "p.json").exists()


def test_cpu_contention_is_steal_and_other_processes_share_of_the_cpus_time() -> None:
    """validate's repeat_steal_pct and repeat_others_pct: between two samples of the CPUs'
    jiffies, the hypervisor's steal and the busy time less this process's own CPU time."""
    import os

    from executor.profiling.timing import CpuSample, cpu_contention, cpu_sample
    hz = os.sysconf("SC_CLK_TCK")
    a = CpuSample(steal=10, busy=100, total=1000, own_s=1.0)
    b = CpuSample(steal=30, busy=180, total=1200, own_s=1.0 + 50 / hz)  # 80 busy, 50 of them ours
    assert cpu_contention(a, b) == (10.0, 15.0)
    busier = CpuSample(steal=30, busy=180, total=1200, own_s=1.0 + 100 / hz)  # more own time than busy
    assert cpu_contention(a, busier) == (10.0, 0.0)
    assert cpu_contention(a, a) == (None, None) and cpu_contention(None, b) == (None, None)
    now = cpu_sample()
    if now is not None:  # Linux
        assert now.total > 0 and 0 <= now.steal <= now.total and 0 <= now.busy <= now.total


@pytest.mark.slow
def test_two_node_comm_script_smoke_run(tmp_path: Path) -> None:
    """benchmarks/gpu_two_nodes_comm.sh on CPU/gloo (QUICK=1): 4 ranks posing as 2 nodes,
    collectives in 2 passes, then the held-out check with each point's floor."""
    env = dict(_env(tmp_path), OUT=str(tmp_path / "out"), QUICK="1", COMM_PASSES="2",
               PET_MASTER_PORT=str(free_port()),  # torchrun's --master-port
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_two_nodes_comm.sh")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    prof = Profile.load(tmp_path / "out" / "h200x4-2nodes.json.gz")
    assert (prof.nodes, prof.gpus_per_node) == (2, 2) and prof.meta["grid"]["comm_passes"] == 2
    text = (tmp_path / "out" / "heldout_collectives.txt").read_text()
    assert text.splitlines()[-1].startswith("all ") and ", floor " in text.splitlines()[-1]
    assert not (tmp_path / "out" / "h200x4-2nodes.json").exists()  # only the compressed profile is kept
