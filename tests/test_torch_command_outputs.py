"""The torch-side commands check their outputs before any work, like every other command."""
from __future__ import annotations

from pathlib import Path

import pytest

from moesched.cli import main


@pytest.mark.parametrize("argv, needle", [
    (["profile", "--out", "{tmp}/missing/p.json"], "does not exist"),
    (["profile", "--out", "{tmp}"], "is a directory"),
    (["validate", "--profile", "h200x4-nvlink", "--configs", "{tmp}/c.json", "--out", "{tmp}/c.json"],
     "same file as --configs"),
    (["validate", "--profile", "h200x4-nvlink", "--configs", "c.json", "--out", "{tmp}/missing/r.csv"],
     "does not exist"),
    (["validate", "--profile", "h200x4-nvlink", "--configs", "c.json", "--out", "r.csv",
      "--heartbeat-timeout", "nan"], "--heartbeat-timeout"),
])
def test_refused_before_work(argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "c.json").write_text("[]")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moesched: error: ") and err.count("\n") == 1 and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
