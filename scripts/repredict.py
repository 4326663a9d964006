"""Re-predict measured validation runs with the current model: the very plans that ran.

    python scripts/repredict.py results/gpu/session7 [nvlink hostmem 2nodes]

For each regime, reads ``validation-REG.csv`` (what ran and what it measured),
``plans-REG.json`` (the plan of every row, as ``moesched validate`` built it, checked
against the row's plan hash) and ``h200x4-REG.json`` (the profile of that run), replays
each plan on the profile with the current simulator and cost lookups, and prints the
step-time error as run and now (mean and max |error| %, Spearman per config). Writes
``repredicted-REG.csv`` beside them. Nothing is measured: a model change is checked
against the same measurements.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pandas as pd

from moesched.errors import MoeschedError
from moesched.fileio import write_atomic
from moesched.plan import Plan
from moesched.profile import Profile


def repredict(folder: Path, regime: str) -> pd.DataFrame:
    prof = Profile.load(folder / f"h200x4-{regime}.json")
    df = pd.read_csv(folder / f"validation-{regime}.csv")
    plans = [Plan.from_dict(p) for p in json.loads((folder / f"plans-{regime}.json").read_text())]
    if len(plans) != len(df) or any(p.hash[:12] != h for p, h in zip(plans, df["plan_hash"])):
        raise MoeschedError(f"{folder}/plans-{regime}.json does not hold the plans of validation-{regime}.csv")
    df["now_ms"] = [round(p.replay(prof).makespan_us / 1e3, 4) for p in plans]
    df["now_error_pct"] = (100 * (df["now_ms"] - df["measured_ms"]) / df["measured_ms"]).round(3)
    return df


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else Path("results/gpu/session7")
    for reg in argv[1:] or ["nvlink", "hostmem", "2nodes"]:
        df = repredict(folder, reg)
        rho = lambda col: statistics.fmean(  # noqa: E731
            g[col].corr(g["measured_ms"], method="spearman") for _, g in df.groupby("config"))
        print(f"{reg}: as run |err| mean {df['error_pct'].abs().mean():.2f} % max {df['error_pct'].abs().max():.2f} %"
              f" Spearman {rho('predicted_ms'):.3f}; now mean {df['now_error_pct'].abs().mean():.2f} % max "
              f"{df['now_error_pct'].abs().max():.2f} % Spearman {rho('now_ms'):.3f}")
        by = df.groupby("config").agg(as_run=("error_pct", lambda x: x.abs().mean()),
                                      now=("now_error_pct", lambda x: x.abs().mean()))
        print(by.round(2).T.to_string())
        write_atomic(folder / f"repredicted-{reg}.csv", df.to_csv(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
