"""``moesched plot``: the figures are valid PNGs; bad input is one error line and exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moesched import schedules
from moesched.cli import main
from moesched.cluster import Cluster
from moesched.models import MoEModel
from moesched.profile import PROFILES_DIR, Profile
from moesched.schedules.base import evaluate
from moesched.trace import write_chrome_trace

ROOT = Path(__file__).resolve().parent.parent
NVLINK = PROFILES_DIR / "analytic-h200x4-nvlink.json"
SWEEP_CSV = ROOT / "notebooks" / "data" / "sweep_schemoe675.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    import matplotlib.image as mpimg
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")], "temporary file left behind"


def assert_one_line_error(rc: int, err: str) -> None:
    assert rc == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moesched: error:"), err


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A one-timeline trace (vanilla) and a two-timeline trace (pipemoe + vanilla)."""
    d = tmp_path_factory.mktemp("traces")
    model = MoEModel.from_name("GPT2-Tiny-MoE", layers=2)
    profile = Profile.load(NVLINK)
    cluster = Cluster(1, 4)
    ev = {n: evaluate(model, cluster, profile, schedules.get(n).schedule(model, cluster, profile))
          for n in ("vanilla", "pipemoe")}
    write_chrome_trace(ev["vanilla"].timeline, d / "vanilla.json", label="vanilla")
    write_chrome_trace(ev["pipemoe"].timeline, d / "both.json", label="pipemoe",
                       extra_timelines={"vanilla": ev["vanilla"].timeline})
    return {"one": d / "vanilla.json", "two": d / "both.json"}


def test_timeline(traces: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "figs" / "tl.png"
    out.parent.mkdir()  # the CLI writes into existing folders only
    assert main(["plot", "timeline", "--trace", str(traces["one"]), "--trace", str(traces["two"]),
                 "--out", str(out)]) == 0
    assert_png(out)
    said = capsys.readouterr().out
    assert "vanilla" in said and "both/pipemoe" in said and "both/vanilla" in said


def test_compare(tmp_path: Path) -> None:
    out = tmp_path / "cmp.png"
    assert main(["plot", "compare", "--model", "GPT2-Tiny-MoE", "--layers", "2", "--profile", str(NVLINK),
                 "--out", str(out)]) == 0
    assert_png(out)


def test_sweep(tmp_path: Path) -> None:
    csv = tmp_path / "s.csv"
    csv.write_text("".join(SWEEP_CSV.read_text().splitlines(keepends=True)[:41]))
    out = tmp_path / "sweep.png"
    assert main(["plot", "sweep", "--csv", str(csv), "--out", str(out)]) == 0
    assert_png(out)


def _bad_inputs(tmp: Path, traces: dict[str, Path]) -> list[list[str]]:
    (tmp / "notjson.json").write_text("{ nope")
    (tmp / "noevents.json").write_text(json.dumps({"traceEvents": []}))
    (tmp / "list.json").write_text(json.dumps([1, 2]))
    (tmp / "badevent.json").write_text(json.dumps({"traceEvents": [{"ph": "X", "pid": 0, "tid": 0, "name": "a"}]}))
    (tmp / "cols.csv").write_text("a,b\n1,2\n")
    (tmp / "empty.csv").write_text("")
    header = SWEEP_CSV.read_text().splitlines()[0]
    (tmp / "nonnum.csv").write_text(header + "\n" + ",".join("x" for _ in header.split(",")) + "\n")
    bad_sweeps = _bad_sweep_rows(tmp)
    good = str(traces["one"])
    return [
        ["plot", "timeline", "--trace", str(tmp / "missing.json"), "--out", str(tmp / "x.png")],
        ["plot", "timeline", "--trace", str(tmp / "notjson.json"), "--out", str(tmp / "x.png")],
        ["plot", "timeline", "--trace", str(tmp / "noevents.json"), "--out", str(tmp / "x.png")],
        ["plot", "timeline", "--trace", str(tmp / "list.json"), "--out", str(tmp / "x.png")],
        ["plot", "timeline", "--trace", str(tmp / "badevent.json"), "--out", str(tmp / "x.png")],
        ["plot", "timeline", "--trace", good, "--rank", "7", "--out", str(tmp / "x.png")],
        ["plot", "timeline", "--trace", good, "--out", str(tmp / "x.pdf")],
        ["plot", "timeline", "--trace", good, "--out", str(tmp)],
        ["plot", "compare", "--model", "NoSuchModel", "--profile", str(NVLINK), "--out", str(tmp / "x.png")],
        ["plot", "compare", "--model", "GPT2-Tiny-MoE", "--profile", str(tmp / "none.json"),
         "--out", str(tmp / "x.png")],
        ["plot", "compare", "--model", "GPT2-Tiny-MoE", "--cluster", "2x8", "--network", "no-such-preset",
         "--out", str(tmp / "x.png")],
        ["plot", "sweep", "--csv", str(tmp / "missing.csv"), "--out", str(tmp / "x.png")],
        ["plot", "sweep", "--csv", str(tmp / "cols.csv"), "--out", str(tmp / "x.png")],
        ["plot", "sweep", "--csv", str(tmp / "empty.csv"), "--out", str(tmp / "x.png")],
        ["plot", "sweep", "--csv", str(tmp / "nonnum.csv"), "--out", str(tmp / "x.png")],
    ] + [["plot", "sweep", "--csv", str(p), "--out", str(tmp / "x.png")] for p in bad_sweeps]


def _bad_sweep_rows(tmp: Path) -> list[Path]:
    """Copies of a shipped sweep CSV's first rows with one cell changed: infinite, NaN,
    negative, zero or boolean step times, a missing vanilla time, a degree that is text."""
    import pandas as pd
    good = pd.read_csv(SWEEP_CSV, nrows=3)
    edits = [("moesched_us", "inf"), ("moesched_us", "True"), ("vanilla_us", "nan"), ("vanilla_us", "-5"),
             ("vanilla_us", "0"), ("vanilla_us", "1e400"), ("r_fwd", "two")]
    out = []
    for i, (col, v) in enumerate(edits):
        df = good.astype(str)
        df.loc[1, col] = v
        out.append(tmp / f"bad-sweep-{i}.csv")
        df.to_csv(out[-1], index=False)
    return out


def test_bad_input_in_process(traces: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for argv in _bad_inputs(tmp_path, traces):
        rc = main(argv)
        assert_one_line_error(rc, capsys.readouterr().err)
        assert not (tmp_path / "x.png").exists()


def test_usage_errors_exit_2(traces: dict[str, Path], tmp_path: Path) -> None:
    """Through the real entry point: argparse mistakes are one line and status 2 as well."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for argv in (["plot"], ["plot", "timeline", "--out", str(tmp_path / "x.png")], ["plot", "pie", "--out", "x.png"],
                 ["plot", "sweep", "--csv", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x.png")]):
        p = subprocess.run([sys.executable, "-m", "moesched", *argv], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
        assert_one_line_error(p.returncode, p.stderr)


def test_failed_plot_keeps_old_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "keep.png"
    out.write_bytes(b"old")
    (tmp_path / "bad.csv").write_text("name,M\nx,1\n")
    assert main(["plot", "sweep", "--csv", str(tmp_path / "bad.csv"), "--out", str(out)]) == 2
    assert out.read_bytes() == b"old"
