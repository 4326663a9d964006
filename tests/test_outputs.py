"""Output paths: refused before any work, never replacing an input, a device or a link;
temporary files gone after SIGTERM; Ctrl-C and SIGTERM end a command in one line."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from moesched import fileio
from moesched.cli import main
from moesched.errors import MoeschedError
from moesched.profile import PROFILES_DIR

ROOT = Path(__file__).resolve().parent.parent
NVLINK = PROFILES_DIR / "analytic-h200x4-nvlink.json"
SOLVE = ["solve", "--model", "GPT2-Tiny-MoE", "--profile", str(NVLINK)]
SIM = ["simulate", "--model", "GPT2-Tiny-MoE", "--profile", str(NVLINK), "--schedules", "vanilla"]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = int(e.code)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_refused(argv: list[str], capsys: pytest.CaptureFixture, phrase: str) -> None:
    """Exit 2, one stderr line containing ``phrase``, and nothing computed (no stdout)."""
    rc, out, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("moesched: error:"), err
    assert phrase in lines[0], lines[0]
    assert out == ""  # refused before any work: nothing was solved or printed


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


def test_empty_directory_and_missing_folder_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_refused(SOLVE + ["--out", ""], capsys, "empty")
    assert_refused(SOLVE + ["--out", str(tmp_path)], capsys, "is a directory")
    assert_refused(SOLVE + ["--out", "p.json", "--trace", str(tmp_path)], capsys, "is a directory")
    assert_refused(SOLVE + ["--out", str(tmp_path / "new" / "sub" / "p.json")], capsys, "does not exist")
    assert not (tmp_path / "new").exists()  # no folder is created
    assert_refused(SIM + ["--png", str(tmp_path / "new" / "g.png")], capsys, "does not exist")
    assert_refused(["sweep", "--grid", "schemoe675", "--limit", "1", "--profile", str(NVLINK), "--out",
                    str(tmp_path / "new" / "s.csv")], capsys, "does not exist")
    assert_refused(["plot", "compare", "--model", "GPT2-Tiny-MoE", "--profile", str(NVLINK),
                    "--out", str(tmp_path / "new" / "c.png")], capsys, "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_special_files_are_never_replaced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # /dev/null through the helper only: a regression must not replace the real device
    with pytest.raises(MoeschedError, match="special file"):
        fileio.check_outputs({"--out": "/dev/null"})
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert_refused(SOLVE + ["--out", str(fifo)], capsys, "special file")
    assert_refused(SIM + ["--trace", str(fifo)], capsys, "special file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    # reading a fifo would block until a writer comes: an input must be a regular file (a
    # writer thread unblocks a reader, so a regression fails here instead of hanging)
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader yet
                time.sleep(0.05)
                continue
            os.close(fd)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        assert_refused(SOLVE + ["--out", str(tmp_path / "p.json"), "--profile", str(fifo)], capsys,
                       "not a regular file")
        assert_refused(["plot", "sweep", "--csv", str(fifo), "--out", str(tmp_path / "x.png")], capsys,
                       "not a regular file")
    finally:
        stop.set()
        t.join()


def _readonly_folder(tmp_path: Path) -> tuple[Path, object]:
    """A folder this process cannot create files in, and an undo function; as root via a
    read-only bind mount (skipped where mounting is not allowed)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        return ro, lambda: ro.chmod(0o755)
    r = subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("running as root and cannot make a read-only bind mount")
    return ro, lambda: subprocess.run(["umount", str(ro)], check=True)


def test_unwritable_folder_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if Path("/proc").is_dir():  # no file can be created there, root or not
        assert_refused(SOLVE + ["--out", "/proc/p.json"], capsys, "/proc")
    ro, undo = _readonly_folder(tmp_path)
    try:
        assert_refused(SOLVE + ["--out", str(ro / "p.json")], capsys, "writable")
        assert_refused(SOLVE + ["--out", str(tmp_path / "ok.json"), "--trace", str(ro / "t.json")], capsys,
                       "writable")
        assert not (tmp_path / "ok.json").exists()  # the plan is not written before the trace fails
    finally:
        undo()


def test_output_equal_to_an_input_or_another_output(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    prof = tmp_path / "prof.json"
    prof.write_bytes(NVLINK.read_bytes())
    before = prof.read_bytes()
    base = ["solve", "--model", "GPT2-Tiny-MoE", "--profile", str(prof)]
    assert_refused(base + ["--out", str(prof)], capsys, "same file as --profile")
    monkeypatch.chdir(tmp_path)
    assert_refused(base + ["--out", "./prof.json"], capsys, "same file as --profile")
    (tmp_path / "alias.json").symlink_to(prof)
    assert_refused(base + ["--out", "alias.json"], capsys, "same file as --profile")
    assert_refused(base + ["--out", "p.json", "--trace", "p.json"], capsys, "same file")
    assert_refused(base + ["--out", "p.json", "--trace", str(tmp_path / "p.json")], capsys, "same file")
    assert_refused(SIM[:3] + ["--profile", str(prof), "--trace", "t.json", "--png", "t.json"], capsys, "same file")
    assert_refused(["sweep", "--grid", "schemoe675", "--limit", "1", "--profile", str(prof), "--out", str(prof)],
                   capsys, "same file as --profile")
    (tmp_path / "s.png").write_text("name\n")
    assert_refused(["plot", "sweep", "--csv", "s.png", "--out", "s.png"], capsys, "same file as --csv")
    assert prof.read_bytes() == before and (tmp_path / "s.png").read_text() == "name\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.json", "prof.json", "s.png"]


def test_symlink_is_written_through(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "real" / "plan.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    rc, out, err = run_cli(SOLVE + ["--out", str(link)], capsys)
    assert rc == 0, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith("{") and '"moesched.plan"' in target.read_text()


def test_check_outputs_helper(tmp_path: Path) -> None:
    fileio.check_outputs({"--out": str(tmp_path / "a.json"), "--trace": None}, {"--plan": None})
    with pytest.raises(MoeschedError, match="same file as --plan"):
        fileio.check_outputs({"--trace": str(tmp_path / "p.json")}, {"--plan": str(tmp_path / "p.json")})
    with pytest.raises(MoeschedError, match="--a and --b name the same file"):
        fileio.check_outputs({"--a": str(tmp_path / "x"), "--b": str(tmp_path / "." / "x")})
    assert list(tmp_path.iterdir()) == []  # the writability probe leaves nothing behind


def test_write_json_refuses_nan(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    out.write_text("old")
    with pytest.raises(MoeschedError, match=r"a\.b\[1\] is NaN"):
        fileio.write_json(out, {"a": {"b": [1.0, float("nan")]}})
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


TERM_DURING_WRITE = """
import os, signal, sys, time
from moesched import fileio
from moesched.cli import main
fsync = os.fsync
def fsync_then_term(fd):
    fsync(fd)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises before this returns
fileio.os.fsync = fsync_then_term
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_write_removes_temp_file(tmp_path: Path) -> None:
    """SIGTERM arriving inside write_atomic (after the temporary file is written, before the
    rename): the handler cli.main installs unwinds, the temporary file goes, the old file
    stays, one line and status 143."""
    out = tmp_path / "p.json"
    out.write_text("old")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", TERM_DURING_WRITE, *SOLVE, "--out", str(out)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 143 and r.stderr.strip().splitlines() == ["moesched: terminated"], r.stderr
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_main_restores_the_sigterm_handler(capsys: pytest.CaptureFixture) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    assert main(["models"]) == 0
    assert signal.getsignal(signal.SIGTERM) == previous
    capsys.readouterr()


def _sweep(out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "moesched", "sweep", "--grid", "fsmoe1458", "--profile",
                             str(NVLINK), "--workers", "2", "--out", str(out)], cwd=out.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_workers(p: subprocess.Popen, n: int = 2, timeout_s: float = 30.0) -> None:
    """Wait until the sweep has forked its worker processes (so the signal finds them busy)."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        kids = Path(f"/proc/{p.pid}/task/{p.pid}/children")
        if kids.exists() and len(kids.read_text().split()) >= n:
            time.sleep(0.5)
            return
        time.sleep(0.1)


@pytest.mark.parametrize("sig,rc,line", [(signal.SIGINT, 130, "moesched: interrupted"),
                                         (signal.SIGTERM, 143, "moesched: terminated")])
def test_sweep_signal_prints_one_line(sig: int, rc: int, line: str, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM during a
    sweep with worker processes: one line, no worker traceback, the old output intact."""
    out = tmp_path / "s.csv"
    out.write_text("old\n")
    p = _sweep(out)
    _wait_for_workers(p)
    os.killpg(p.pid, sig) if sig == signal.SIGINT else p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == rc, err
    assert err.strip("\r\n ").split("\n") == [line], err
    assert out.read_text() == "old\n"
    assert [q.name for q in tmp_path.iterdir()] == ["s.csv"]
