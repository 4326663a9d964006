"""Did the host's speed move during a validation run, and does the host probe follow it?

CPU only, repository root. Each argument: a folder with a ``validation-one-gpu.csv`` that
``moesched validate --repeats K`` wrote with its per-repeat columns (``repeat_ms``,
``repeat_probe_us``) and the run's profile ``h200x1-one-gpu.json``::

    python benchmarks/repeat_drift.py results/h200x1/passes5/heldout-rep results/h200x1/passes5/profiled-rep

Prints, per repeat in run order, the median host probe over the plans (and, where the CSV
has them, the CPU time stolen by the hypervisor and busy with other processes) and the mean
and max |error| of the prediction against that repeat's medians; the profiler's probe; and, within
each plan, how the repeats' step medians follow their probes: the median over plans of
Pearson's r, and the pooled slope of log(step / the plan's median) on log(probe / the
plan's median) (1: the step slows as much as the probe; 0: not at all). The prediction is
the same for every repeat, so a repeat whose error stands out measured another host.
Nothing is fitted into the model.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from moesched.errors import MoeschedError
from moesched.profile import Profile
from moesched.validation_csv import repeat_values
from moesched.validation_summary import repeat_stats


def per_repeat(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(step medians, probes) [rows, K] of the rows' K repeats (ms, µs)."""
    if "repeat_ms" not in df or df["repeat_ms"].isna().any():
        raise MoeschedError("the CSV has no repeat_ms column (written by validate --repeats K)")
    steps = np.array([repeat_values(v) for v in df["repeat_ms"]], dtype=float)
    probes = np.array([repeat_values(v) for v in df["repeat_probe_us"]], dtype=float)
    return steps, probes


def report(folder: Path) -> None:
    df = pd.read_csv(folder / "validation-one-gpu.csv")
    steps, probes = per_repeat(df)
    p0 = Profile.load(folder / "h200x1-one-gpu.json").meta.get("host_probe_us")
    st = repeat_stats(df)
    assert st is not None  # per_repeat checked the columns
    print(f"== {folder}: {len(df)} rows, {steps.shape[1]} repeats; profiler's probe {p0} µs")
    for i, (mean, mx) in enumerate(zip(st.mean_err_pct, st.max_err_pct)):
        extra = "".join(f", {c[7:-4]} {st.host[c][i]:.1f} %" for c in ("repeat_steal_pct", "repeat_others_pct")
                        if c in st.host)
        print(f"  repeat {i + 1}: probe {st.host['repeat_probe_us'][i]:.1f} µs{extra}, |error| mean {mean:.2f} %, "
              f"max {mx:.2f} %")
    if steps.shape[1] < 3:
        print("  (how steps follow the probe within a plan needs 3 repeats or more)")
        return
    rs = [np.corrcoef(p, s)[0, 1] for p, s in zip(probes, steps) if np.ptp(p) > 0 and np.ptp(s) > 0]
    x = np.log(probes / np.median(probes, 1, keepdims=True)).ravel()
    y = np.log(steps / np.median(steps, 1, keepdims=True)).ravel()
    print(f"  within a plan, step against probe: median r {statistics.median(rs):.2f} over {len(rs)} plans, "
          f"pooled slope {np.polyfit(x, y, 1)[0]:.2f}")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    try:
        for a in argv:
            report(Path(a))
    except (MoeschedError, OSError, KeyError, ValueError) as e:
        print(f"moesched: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
