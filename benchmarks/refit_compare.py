"""Refit validation runs' profiles under two versions of the code and re-predict each run.

CPU only, repository root. Compares two fitting rules on the same measurements: for every
run folder (as ``benchmarks/repredict.py`` reads them: ``validation-REG.csv``,
``h200xN-REG.json``, ``plans-REG.json``), copies it to ``SCRATCH/old/FOLDER`` and
``SCRATCH/new/FOLDER``, refits the copy's profile (``moesched profile --refit``) with the
code under ``--old`` and ``--new`` (each a source tree, put first on PYTHONPATH), and
re-predicts it with that code (``benchmarks/repredict.py``). A folder without
``plans-REG.json`` gets them from ``--old``'s ``repredict.py --write-plans`` on the profile
as run. The committed folders are never written. Prints a table: mean / max |step-time
error| % as run, refit with the old code, refit with the new one, and the mean over the
rows of ``--config`` (default gpt-top1-fp32), |error| and signed, as run / old / new::

    python benchmarks/refit_compare.py --old /tmp/oldcode --new . --scratch /tmp/cmp \\
        results/h200x1/pinned/heldout-rep results/h200x1/pinned/profiled-rep
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd


def _run(root: Path, args: list[str], cwd: Path) -> None:
    """Run ``python ARGS`` in ``cwd`` with ``root`` first on PYTHONPATH; raise on failure."""
    env = dict(os.environ, PYTHONPATH=str(root.resolve()))
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(args)} under {root}: exit {r.returncode}\n{r.stderr[-2000:]}")


def _errors(df: pd.DataFrame, col: str, config: str) -> dict[str, float]:
    """Errors (%) in column ``col`` of a validation CSV: mean and max |error| over all rows,
    mean |error| and mean signed error over ``config``'s rows (NaN if none)."""
    e, mine = df[col], df[col][df["config"] == config]
    return {"mean": e.abs().mean(), "max": e.abs().max(), "cfg": mine.abs().mean(), "cfg_signed": mine.mean()}


def compare(folder: Path, old: Path, new: Path, scratch: Path, config: str) -> dict[str, float]:
    """One folder's row of the table (errors in %)."""
    (csv,) = folder.glob("validation-*.csv")
    reg = csv.stem[len("validation-"):]
    (prof,) = [*folder.glob(f"h200x[0-9]-{reg}.json"), *folder.glob(f"h200x[0-9]-{reg}.json.gz")]
    row = {f"as_run_{k}": v for k, v in _errors(pd.read_csv(csv), "error_pct", config).items()}
    for name, root in (("old", old), ("new", new)):
        dst = scratch / name / folder
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(folder, dst)
        if prof.suffix == ".gz":  # as plain JSON, which the old tree reads too
            (dst / prof.stem).write_bytes(gzip.decompress((dst / prof.name).read_bytes()))
            (dst / prof.name).unlink()
        if not (dst / f"plans-{reg}.json").exists():
            _run(old, [str(old.resolve() / "benchmarks/repredict.py"), "--write-plans", str(dst.resolve())], old)
        _run(root, ["-m", "moesched.cli", "profile", "--refit", str((dst / prof.name.removesuffix(".gz")).resolve())], root)
        _run(root, [str(root.resolve() / "benchmarks/repredict.py"), str(dst.resolve())], root)
        (out,) = dst.glob("repredicted-*.csv")
        row.update({f"{name}_{k}": v for k, v in _errors(pd.read_csv(out), "now_error_pct", config).items()})
    return row


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="source tree of the old code")
    ap.add_argument("--new", type=Path, required=True, help="source tree of the new code")
    ap.add_argument("--scratch", type=Path, required=True, help="where the folders are copied and refitted")
    ap.add_argument("--config", default="gpt-top1-fp32", help="config whose rows get their own column")
    ap.add_argument("folders", nargs="+", type=Path)
    a = ap.parse_args(argv)
    rows = {str(f): compare(f, a.old, a.new, a.scratch, a.config) for f in a.folders}
    df = pd.DataFrame.from_dict(rows, orient="index")
    cols = [f"{w}_{s}" for s in ("mean", "max") for w in ("as_run", "old", "new")]
    print("|error| % of step time: as run, refit with --old, refit with --new")
    print(df[cols].round(2).to_string())
    print(f"\n{a.config} rows: mean |error| % (cfg) and mean signed error % (cfg_signed)")
    cfg = [f"{w}_{s}" for s in ("cfg", "cfg_signed") for w in ("as_run", "old", "new")]
    print(df[cfg].dropna().round(2).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
