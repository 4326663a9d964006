"""Committed derived data match what the code computes today: the sweep CSVs
(notebooks/data and results/sweeps, a deterministic subset of rows recomputed) and the
predicted traces of notebooks/data (every pair, from its committed plan and today's shipped
profile). Regenerate with ``python notebooks/make_notebooks.py --all``."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from moesched.cluster import Cluster
from moesched.profile import Profile
from moesched.solve import grids
from moesched.solve.sweep import row_for
from moesched.trace import read_chrome_trace

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "notebooks" / "data"
ROWS_PER_CSV = 6
FIX = "regenerate with `python notebooks/make_notebooks.py --all`"


def _maker():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "notebooks" / "make_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def _sweeps() -> list[tuple[Path, str, str]]:
    """(CSV, grid, profile name) of every committed sweep."""
    prov = json.loads((DATA / "sweeps.json").read_text())
    out = [(DATA / f"sweep_{g}.csv", g, Path(prov[g]["profile"]).stem) for g in ("schemoe675", "fsmoe1458")]
    for p in sorted((ROOT / "results" / "sweeps").glob("*.csv")):
        grid, regime = p.stem.split("-", 1)
        out.append((p, grid, f"h200x4-{regime}"))
    return out


def _same(committed: str, fresh: object) -> bool:
    if fresh is None:
        return committed == ""
    if isinstance(fresh, float):
        return committed != "" and abs(float(committed) - fresh) <= 1e-3 + 1e-9 * abs(fresh)
    return committed == str(fresh)


@pytest.mark.parametrize("path,grid,profile_name", _sweeps(), ids=lambda x: getattr(x, "name", str(x)))
def test_sweep_rows_match_the_code(path: Path, grid: str, profile_name: str) -> None:
    profile = Profile.load(profile_name)
    cluster = Cluster(profile.nodes, profile.gpus_per_node)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"{path} has no rows"
    models = {m.name: m for m in grids.grid(grid, cluster.world)}
    assert len(rows) == sum(grids.feasible(m, cluster, profile) is None for m in models.values()), \
        f"{path.name}: row count differs from the grid's feasible layers; {FIX}"
    for row in rows[:: max(1, len(rows) // ROWS_PER_CSV)]:
        fresh = row_for(models[row["name"]], cluster, profile)
        assert list(fresh) == list(row), f"{path.name}: columns differ; {FIX}"
        bad = {k: (row[k], v) for k, v in fresh.items() if not _same(row[k], v)}
        assert not bad, f"{path.name} row {row['name']} differs from the code (committed, now): {bad}; {FIX}"


def test_every_measured_gpu_pair_has_a_plan() -> None:
    measured = {p.stem[len("measured_"):] for p in DATA.glob("measured_*.json")}
    assert measured and measured == set(_maker().predicted_pairs())


@pytest.mark.parametrize("name", _maker().predicted_pairs())
def test_predicted_traces_match_the_code(name: str) -> None:
    committed = read_chrome_trace(DATA / f"predicted_{name}.json")
    fresh = _maker().predicted_timeline(name)
    assert committed.makespan_us == pytest.approx(fresh.makespan_us, rel=1e-9), f"predicted_{name}.json: {FIX}"
    a = committed.df.set_index(["task", "rank"]).sort_index()[["start_us", "end_us"]]
    b = fresh.df.set_index(["task", "rank"]).sort_index()[["start_us", "end_us"]]
    assert list(a.index) == list(b.index)
    assert (a - b).abs().to_numpy().max() < 1e-3, f"predicted_{name}.json task times differ; {FIX}"
