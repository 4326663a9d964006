"""The import layers of pyproject.toml's ``[tool.importlinter]`` contracts, run by
``lint-imports``: moesched imports neither executor nor torch, and no package has an import
cycle among its modules. A copy of the code with one bad import breaks the contracts."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` run from ``root``, on the packages found there (import-linter comes
    with the test extra: ``pip install -e '.[test]'``)."""
    exe = shutil.which("lint-imports") or shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "lint-imports not found: pip install -e '.[test]' (import-linter)"
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([exe, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold() -> None:
    res = lint(ROOT)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def _copy(tmp_path: Path) -> Path:
    for name in ("moesched", "executor"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize("module, line, broken", [
    ("moesched/sim.py", "import executor.runtime", "moesched is not allowed to import executor"),
    ("moesched/graph.py", "import torch", "moesched is not allowed to import torch"),
    ("moesched/kinds.py", "from moesched import profile", "No cycles are allowed in moesched"),
    ("executor/profiling/timing.py", "from executor.profiling import main", "No cycles are allowed in executor"),
])
def test_a_bad_import_breaks_a_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    root = _copy(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    res = lint(root)
    assert res.returncode == 1, res.stdout[-2000:]
    assert broken in res.stdout
