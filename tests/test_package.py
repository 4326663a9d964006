"""Packaging: a wheel built from the repository ships the profiles as package data, and an
install from it resolves them (moesched.profile.shipped_profiles_dir)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "README.md", "moesched", "executor", "profiles")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built (without network) from a copy of the sources, so no build folder is
    left in the repository."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(
            ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}))
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                        str(src)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "No module named pip" in r.stderr:
        pytest.skip("pip is not available")
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("moesched-*.whl")
    return whl


def test_wheel_ships_every_profile(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in (ROOT / "profiles").glob("*.json"))
    assert shipped and all(f"moesched/profiles/{n}" in names for n in shipped), sorted(names)[:20]
    assert "moesched/cli.py" in names and "executor/run.py" in names
    presets = sorted(p.name for p in (ROOT / "moesched" / "networks").glob("*.json"))
    assert presets and all(f"moesched/networks/{n}" in names for n in presets), presets


def test_installed_wheel_resolves_profiles_from_anywhere(wheel: Path, tmp_path: Path) -> None:
    """Unpacked on its own (as site-packages would hold it), the package finds its profiles
    by name from an unrelated folder, and the main command runs."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    code = ("import sys; from moesched.profile import PROFILES_DIR, Profile; from moesched.cli import main; "
            "print(PROFILES_DIR); Profile.load('h200x4-nvlink.json'); "
            "sys.exit(main(['solve', '--model', 'GPT2-Tiny-MoE', '--out', 'p.json']))")
    r = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                       cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[0] == str(site / "moesched" / "profiles")
    assert (work / "p.json").read_text().startswith("{")
