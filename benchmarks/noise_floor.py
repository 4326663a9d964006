"""How well can any model predict a validation run? The noise floor of its measurements.

CPU only, repository root. Arguments: one run folder as :mod:`benchmarks.repredict` reads it
(``validation-REG.csv``, ``plans-REG.json``, ``h200xN-REG.json``) and, optionally, more CSVs of
the same configs and schedules measured in other sessions::

    python benchmarks/noise_floor.py results/h200x1/heldout results/h200x1/work-units/heldout-work.csv
    python benchmarks/noise_floor.py results/h200x1/profiled results/h200x1/work-units/profiled-work.csv

Two schedules whose plans are identical (same model, knobs and issue order, e.g. Tutel and
ScheMoE on one GPU) are one plan measured twice, and a plan run again in another session is
measured once more. A deterministic model gives every measurement of one plan the same
prediction p, so its |error| over measurements a_i of that plan is at least
min_p max_i |p - a_i| / a_i (the max floor; p = the harmonic-mean point of the extremes,
error (a_max - a_min) / (a_max + a_min)) and min_p mean_i |p - a_i| / a_i (the mean floor).
Prints, per run: the plans measured more than once, the floor of the max and the mean over
the first CSV alone and over every CSV, and the spread between sessions binned by how
host-bound the plan is by the model (the sum of its tasks' host issue µs over the sum of
their compute µs, :func:`host_bound`): measurements of host-bound plans carry the host's
speed of the moment. Nothing is measured and nothing is fitted.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from moesched.errors import MoeschedError
from moesched.graph import build
from moesched.noisefloor import floors as plan_floors
from moesched.plan import Plan
from moesched.profile import Profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repredict import profile_path, regime_of  # noqa: E402

#: Bins of :func:`host_bound` for the spread between sessions.
BINS = (0.0, 0.5, 0.8, 1.0, 1.3, float("inf"))


def host_bound(plan: Plan, profile: Profile) -> float:
    """Sum of the plan's host issue µs (:mod:`moesched.host`) over the sum of its compute
    tasks' µs, by the model: above about 1 the step waits for the host."""
    g = build(plan.model, plan.cluster, profile, plan.knobs)
    host_us = sum(a.get("host_us", 0.0) for _, a in g.nodes(data=True))
    gpu_us = sum(a["duration_us"] for _, a in g.nodes(data=True) if a["resource"] == "compute")
    return host_us / gpu_us if gpu_us > 0 else float("inf")


#: Another session's row counts as the same plan when its predicted_ms is the folder
#: plan's replay within this fraction (same profile, same plan; a plan solved afresh
#: under another profile is another plan and is left out).
SAME_PLAN_REL = 5e-4


def plan_table(folder: Path, others: list[Path]) -> pd.DataFrame:
    """One row per CSV row of ``folder``: config, schedule, plan key (model, knobs, order),
    host-boundness and the measured ms of every CSV (``m0`` the folder's, ``m1``... the
    others', NaN where that session's prediction shows it ran another plan, :data:`SAME_PLAN_REL`)."""
    reg = regime_of(folder)
    prof = Profile.load(profile_path(folder, reg))
    df = pd.read_csv(folder / f"validation-{reg}.csv")
    plans = json.loads((folder / f"plans-{reg}.json").read_text())
    if len(plans) != len(df):
        raise MoeschedError(f"{folder}: {len(plans)} plans for {len(df)} CSV rows")
    out = df[["config", "schedule"]].copy()
    out["key"] = [json.dumps([p["model"], p["knobs"], p["order"]], sort_keys=True) for p in plans]
    objs = [Plan.from_dict(p) for p in plans]
    out["host_bound"] = [host_bound(p, prof) for p in objs]
    pred_ms = [p.replay(prof).makespan_us / 1e3 for p in objs]
    out["m0"] = df["measured_ms"]
    for j, path in enumerate(others, 1):
        o = pd.read_csv(path).set_index(["config", "schedule"])
        col = []
        for c, s, pm in zip(out["config"], out["schedule"], pred_ms):
            same = (c, s) in o.index and abs(o.loc[(c, s), "predicted_ms"] - pm) <= SAME_PLAN_REL * pm
            col.append(float(o.loc[(c, s), "measured_ms"]) if same else float("nan"))
        out[f"m{j}"] = col
    return out


def floors(t: pd.DataFrame, cols: list[str]) -> tuple[float, float]:
    """(max floor %, mean floor % over every measurement) of table ``t`` using columns ``cols``
    (:func:`moesched.noisefloor.floors`, grouped by plan key)."""
    return plan_floors([float(v) for c in cols for v in g[c] if v == v] for _, g in t.groupby("key"))


def report(folder: Path, others: list[Path]) -> None:
    t = plan_table(folder, others)
    cols = [c for c in t.columns if c.startswith("m") and c[1:].isdigit()]
    twice = t.groupby("key").filter(lambda g: len(g) > 1)
    print(f"== {folder}: {len(t)} rows, {t['key'].nunique()} distinct plans")
    for c in cols[1:]:
        print(f"  {others[int(c[1:]) - 1]}: {int(t[c].notna().sum())} of {len(t)} rows ran the same plan")
    for _, g in twice.groupby("key", sort=False):
        ms = {c: [round(v, 2) for v in g[c]] for c in cols}
        print(f"  identical plans {g['config'].iloc[0]}: {'='.join(g['schedule'])} measured {ms} ms")
    mx, mean = floors(t, ["m0"])
    print(f"  floor of any deterministic model, first CSV: max {mx:.1f} %, mean {mean:.2f} %")
    if len(cols) > 1:
        mx, mean = floors(t, cols)
        print(f"  ... over all {len(cols)} CSVs: max {mx:.1f} %, mean {mean:.2f} %")
        t["spread_pct"] = 100 * (t[cols].max(axis=1) - t[cols].min(axis=1)) / t[cols].min(axis=1)
        t = t[t[cols].notna().sum(axis=1) > 1]
        by = t.groupby(pd.cut(t["host_bound"], BINS), observed=True)["spread_pct"].agg(["size", "mean", "max"])
        print("  same plan, spread between sessions (%) by host issue / compute time of the plan:")
        print(by.round(1).to_string())


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python benchmarks/noise_floor.py RUN_FOLDER [OTHER_SESSION.csv ...]", file=sys.stderr)
        return 2
    report(Path(argv[0]), [Path(a) for a in argv[1:]])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except MoeschedError as e:
        print(f"noise_floor: error: {e}", file=sys.stderr)
        sys.exit(2)
