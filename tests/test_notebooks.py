"""The notebooks: committed with outputs, in step with notebooks/make_notebooks.py, and
executing headless without a cell error (nbclient, python3 kernel, a temp copy)."""
from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NAMES = ("01_quickstart", "02_timelines", "03_layer_grids", "04_routing_placement", "05_layouts", "06_inference")
BUDGET_S = 170.0  # all together, on CPU
_ELAPSED: dict[str, float] = {}


def _maker():
    spec = importlib.util.spec_from_file_location("make_notebooks", NB_DIR / "make_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", NAMES)
def test_committed_with_outputs_and_current(name: str) -> None:
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "notebook committed without executing every cell"
    assert any(o.get("data", {}).get("image/png") for c in code for o in c.outputs), "no figure in the outputs"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    fresh = _maker().build(name)
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in fresh.cells], \
        "notebook differs from make_notebooks.py: run `python notebooks/make_notebooks.py`"


@pytest.mark.parametrize("name", NAMES)
def test_executes_headless(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("MOESCHED_ROOT", str(ROOT))
    copy = tmp_path / f"{name}.ipynb"
    shutil.copy(NB_DIR / f"{name}.ipynb", copy)
    nb = nbformat.read(copy, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    t0 = time.perf_counter()
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    except CellExecutionError as e:
        pytest.fail(f"{name}: a cell failed:\n{str(e)[-3000:]}")
    _ELAPSED[name] = time.perf_counter() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert sum(_ELAPSED.values()) < BUDGET_S, f"notebooks took {_ELAPSED} s together, over {BUDGET_S} s"


def test_data_present() -> None:
    """The committed data the notebooks read."""
    for grid in ("schemoe675", "fsmoe1458"):
        assert (NB_DIR / "data" / f"sweep_{grid}.csv").stat().st_size > 0
    assert (NB_DIR / "data" / "sweeps.json").exists()
