"""A rank that dies (SIGKILL) or stops (SIGSTOP) mid-run under torchrun: the other rank
prints ONE line ``moesched: error: ...`` and exits 2, and the whole torchrun returns within
the watchdog's bound (``--heartbeat-timeout`` + 2 heartbeat intervals + process exit)."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist
from localhost import free_port

from moesched.cluster import Cluster
from moesched.knobs import Knobs

from executor.testplans import make_plan, tiny_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
HEARTBEAT_S = 3.0
# the documented bound: timeout + two intervals (min(1, T/5) s), plus process exits and
# torchrun's teardown (generous: the suite shares two cores); torchrun alone waited 152 s
BOUND_S = HEARTBEAT_S + 2 * 0.6 + 10.0


def _start(launcher: list[str], plan: Path, port: int, log_dir: Path | None) -> subprocess.Popen:
    logs = ["--log-dir", str(log_dir), "--redirects", "2"] if log_dir is not None else []
    cmd = [*launcher, "--nproc_per_node=2", f"--master_port={port}", "--rdzv-id=wd", *logs,
           "-m", "executor.run", "--plan", str(plan), "--steps", "1000000", "--warmup", "0", "--backend", "gloo",
           "--timeout", "60", "--heartbeat-timeout", str(HEARTBEAT_S)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _victim_when_running(port: int, proc: subprocess.Popen, rank: int) -> int:
    """Wait until both ranks beat (they are past the rendezvous and the plan check, in
    their steps); the pid that ``rank`` posted for the watchdog."""
    deadline = time.time() + 60
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            st = dist.TCPStore("127.0.0.1", port, is_master=False, wait_for_workers=False,
                               timeout=timedelta(seconds=5))
            pre = "moesched_watchdog/wd/0"
            if all(st.add(f"{pre}/hb/{r}", 0) >= 4 for r in (0, 1)):
                return int(st.get(f"{pre}/pid/{rank}").decode().split()[1])
        except RuntimeError:
            pass
        time.sleep(0.3)
    raise AssertionError("the ranks did not start")


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plans") / "w2.json"
    make_plan(tiny_model(), Cluster(1, 2), Knobs((2, 1), (1, 2))).save(path)
    return path


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_torchrun_peer_dies_or_stops(plan: Path, tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    proc = _start([sys.executable, "-m", "torch.distributed.run"], plan, port, tmp_path)
    victim = _victim_when_running(port, proc, rank=1)
    t0 = time.time()
    os.kill(victim, sig)
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    took = time.time() - t0
    [survivor] = glob.glob(str(tmp_path / "**" / "attempt_0" / "0" / "stderr.log"), recursive=True)
    err = Path(survivor).read_text()
    assert err.startswith("moesched: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert "exitcode  : 2" in proc.communicate()[1]  # torchrun's own table: rank 0 exited with 2
    assert took < BOUND_S, (took, err)


def test_launcher_reports_one_line(plan: Path) -> None:
    """executor.launch: torchrun's agent without its ChildFailedError traceback."""
    port = free_port()
    proc = _start([sys.executable, "-m", "executor.launch"], plan, port, None)
    victim = _victim_when_running(port, proc, rank=1)
    t0 = time.time()
    os.kill(victim, signal.SIGSTOP)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert time.time() - t0 < BOUND_S
    assert proc.returncode == 2, err
    assert err == "moesched: error: rank 0 failed: rank 1 stopped responding (no heartbeat for 3 s)\n", err
    assert out == ""
