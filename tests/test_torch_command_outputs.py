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


def test_validate_refuses_to_append_to_a_csv_of_other_columns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Rows appended under another header would land in the wrong columns: refused before
    any work, the file left as it was; a CSV of this validate's own columns is accepted."""
    from moesched.validation_csv import FIELDS, check_csv
    old = tmp_path / "old.csv"
    old.write_text("regime,config,schedule,predicted_ms,measured_ms\none-gpu,a,vanilla,1.0,1.1\n")
    before = old.read_text()
    assert main(["validate", "--profile", "h200x4-nvlink", "--configs", "docs/validation_configs.json",
                 "--out", str(old)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moesched: error: --out ") and err.count("\n") == 1 and "other columns" in err, err
    assert old.read_text() == before
    same = tmp_path / "same.csv"
    same.write_text(",".join(FIELDS) + "\n")
    check_csv(str(same))  # no error
    check_csv(str(tmp_path / "new.csv"))  # absent: created by the run
