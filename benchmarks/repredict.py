"""Re-predict measured validation runs with the current model: the very plans that ran.

CPU only, any machine, repository root. Each argument is one regime's folder as written by
``benchmarks/gpu_regimes.sh`` (``validation-REG.csv``, ``plans-REG.json``, ``h200xN-REG.json``)::

    python benchmarks/repredict.py results/h200x4/nvlink results/h200x4/hostmem results/h200x4/2nodes
    python benchmarks/repredict.py --write-plans results/h200x4/nvlink   # once, after a GPU run

For each folder, reads what ran and what it measured (``validation-REG.csv``), the plan of
every row (``plans-REG.json``, as ``moesched validate`` built it, checked against the row's
plan hash) and the profile of that run (``h200xN-REG.json``), replays each plan on the
profile with the current simulator and cost lookups, and prints the step-time error as run
and now (mean and max |error| %, Spearman per config). Writes ``repredicted-REG.csv`` (the
CSV plus ``now_ms`` and ``now_error_pct``; with ``--refit`` ``repredicted-refit-REG.csv``)
beside them. Nothing is measured: a model change is checked against the same measurements.
``--write-plans`` rebuilds the plans with ``executor.validate.make_plan`` (needs torch) and
writes ``plans-REG.json``. ``--refit`` refits each profile from its raw samples first
(``moesched profile --refit`` with the models it timed, looked up by name in the
configuration sets below and the presets), so that a change of the fitting code or of the
operator recipe is checked too::

    python benchmarks/repredict.py --refit results/h200x1/passes8/heldout4x-rep

``--fp32-gemm-axes A,B,...`` (with ``--refit``) first cuts each profile's fp32 GEMM table to
the points whose m, n and k are all among those sizes, as a coarser grid would have
measured it: the same measurements priced with and without a finer grid::

    python benchmarks/repredict.py --refit --fp32-gemm-axes 16,256,1024,4096,16384 results/h200x1/passes9/heldout4x-rep
"""
from __future__ import annotations

import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from moesched.errors import MoeschedError
from moesched.fileio import write_atomic
from moesched.optables import OpTables
from moesched.plan import Plan
from moesched.profile import Profile


def profile_path(folder: Path, regime: str) -> Path:
    """The run's profile: ``h200xN-REG.json`` or ``h200xN-REG.json.gz`` (N GPUs)."""
    found = sorted(folder.glob(f"h200x[0-9]-{regime}.json")) + sorted(folder.glob(f"h200x[0-9]-{regime}.json.gz"))
    if len(found) != 1:
        raise MoeschedError(f"{folder}: expected one h200xN-{regime}.json(.gz), found {[p.name for p in found]}")
    return found[0]


#: The configuration sets the validation runs used (a row's config is looked up by name in all).
CONFIGS = ("docs/validation_configs.json", "results/h200x1/configs-1gpu.json", "results/h200x1/configs-1gpu-dtypes.json",
           "results/h200x1/configs-1gpu-dtypes2.json", "benchmarks/heldout-shapes.json", "benchmarks/heldout-shapes-4x.json")


def write_plans(folder: Path, regime: str, configs: tuple[str, ...] = CONFIGS) -> None:
    """Rebuild the plan of every CSV row as ``moesched validate`` did (same profile, same
    code: :func:`executor.validate.make_plan`), check each against the row's hash, and
    write ``plans-REG.json``."""
    from executor.validate import make_plan
    from moesched.cluster import Cluster
    from moesched.configs import load_configs
    path = profile_path(folder, regime)
    prof = Profile.load(path)
    cluster = Cluster(prof.nodes, prof.gpus_per_node)
    models = {c.name: c.model for f in configs for c in load_configs(f)}
    df = pd.read_csv(folder / f"validation-{regime}.csv")
    plans = [make_plan((str(path), models[c].to_dict(), cluster.to_dict(), s)) for c, s in zip(df["config"], df["schedule"])]
    bad = [f"{c}/{s}" for (c, s, h), p in zip(zip(df["config"], df["schedule"], df["plan_hash"]), plans)
           if Plan.from_dict(p).hash[:12] != h]
    if bad:
        raise MoeschedError(f"plans rebuilt for {bad} differ from those that ran (code or profile changed)")
    write_atomic(folder / f"plans-{regime}.json", json.dumps(plans))


def refitted(prof: Profile, configs: tuple[str, ...] = CONFIGS) -> Profile:
    """``prof`` refitted from its raw samples with the models it timed (``meta.models``, by
    name in ``configs`` or the presets)."""
    from moesched.configs import load_configs
    from moesched.costs.build import refit
    from moesched.models import PRESETS
    known = {**PRESETS, **{c.name: c.model for f in configs for c in load_configs(f)}}
    names = prof.meta.get("models") or []
    if missing := [n for n in names if n not in known]:
        raise MoeschedError(f"profile {prof.name}: models {missing} are in no configuration set")
    return refit(prof, [known[n] for n in names])


def cut_fp32_gemms(prof: Profile, axes: set[int]) -> Profile:
    """``prof`` with its fp32 GEMM table cut to the points (m, n, k) all in ``axes``."""
    if prof.ops is None or "fp32" not in prof.ops.tables:
        raise MoeschedError("the profile has no fp32 operator tables to cut")
    d = prof.ops.to_dict()
    d["tables"]["fp32"]["gemm"] = [r for r in d["tables"]["fp32"]["gemm"] if {int(r[0]), int(r[1]), int(r[2])} <= axes]
    return replace(prof, ops=OpTables.from_dict(d))


def repredict(folder: Path, regime: str, refit: bool = False, fp32_axes: set[int] | None = None) -> pd.DataFrame:
    prof = Profile.load(profile_path(folder, regime))
    if fp32_axes:
        prof = cut_fp32_gemms(prof, fp32_axes)
    if refit:
        prof = refitted(prof)
    df = pd.read_csv(folder / f"validation-{regime}.csv")
    plans = [Plan.from_dict(p) for p in json.loads((folder / f"plans-{regime}.json").read_text())]
    if len(plans) != len(df) or any(p.hash[:12] != h for p, h in zip(plans, df["plan_hash"])):
        raise MoeschedError(f"{folder}/plans-{regime}.json does not hold the plans of validation-{regime}.csv")
    df["now_ms"] = [round(p.replay(prof).makespan_us / 1e3, 4) for p in plans]
    df["now_error_pct"] = (100 * (df["now_ms"] - df["measured_ms"]) / df["measured_ms"]).round(3)
    return df


def regime_of(folder: Path) -> str:
    """The regime of a run folder: the REG of its one ``validation-REG.csv``."""
    found = sorted(folder.glob("validation-*.csv"))
    if len(found) != 1:
        raise MoeschedError(f"{folder}: expected one validation-REG.csv, found {[p.name for p in found]}")
    return found[0].stem[len("validation-"):]


def main(argv: list[str]) -> int:
    write = bool(argv) and argv[0] == "--write-plans"
    refit = bool(argv) and argv[0] == "--refit"
    argv = argv[write or refit:]
    axes = None
    if refit and argv[:1] == ["--fp32-gemm-axes"] and len(argv) > 1:
        if not all(a.isdigit() for a in argv[1].split(",")):
            print(f"repredict: error: --fp32-gemm-axes takes sizes such as 16,256,1024, got {argv[1]!r}", file=sys.stderr)
            return 2
        axes = {int(a) for a in argv[1].split(",")}
        argv = argv[2:]
    folders = [Path(a) for a in argv]
    if not folders or any(a.startswith("--") for a in argv):
        print("usage: python benchmarks/repredict.py [--write-plans | --refit [--fp32-gemm-axes A,B,...]] RUN_FOLDER ...",
              file=sys.stderr)
        return 2
    for folder in folders:
        reg = regime_of(folder)
        if write:
            write_plans(folder, reg)
            continue
        df = repredict(folder, reg, refit, axes)
        rho = lambda col: statistics.fmean(  # noqa: E731
            g[col].rank().corr(g["measured_ms"].rank()) for _, g in df.groupby("config"))  # Spearman, no scipy
        print(f"{reg}: as run |err| mean {df['error_pct'].abs().mean():.2f} % max {df['error_pct'].abs().max():.2f} %"
              f" Spearman {rho('predicted_ms'):.3f}; now mean {df['now_error_pct'].abs().mean():.2f} % max "
              f"{df['now_error_pct'].abs().max():.2f} % Spearman {rho('now_ms'):.3f}")
        by = df.groupby("config").agg(as_run=("error_pct", lambda x: x.abs().mean()),
                                      now=("now_error_pct", lambda x: x.abs().mean()))
        print(by.round(2).T.to_string())
        tag = "-refit-cut" if axes else "-refit" if refit else ""
        write_atomic(folder / f"repredicted{tag}-{reg}.csv", df.to_csv(index=False))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except MoeschedError as e:
        print(f"repredict: error: {e}", file=sys.stderr)
        sys.exit(2)
