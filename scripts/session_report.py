"""Step-time error and measured speedups of one session's GPU runs, as markdown.

    python scripts/session_report.py results/gpu/session5

Reads validation-REGIME.csv (and deepspeed-REGIME.csv where present) of each regime;
prints per regime the mean / max absolute error with and without the host model, and per
configuration moesched's measured speedup over vanilla EP, over the best published policy
and over DeepSpeed-MoE, all from the same run of the same regime.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

PUBLISHED = ("tutel", "pipemoe", "schemoe", "fsmoe", "lina", "flowmoe")


def main(folder: str) -> None:
    d = Path(folder)
    print("| regime | runs | error mean / max | GPU-only error mean / max |\n|---|---|---|---|")
    rows = []
    for reg in ("nvlink", "hostmem", "2nodes"):
        f = d / f"validation-{reg}.csv"
        if not f.exists():
            continue
        v = pd.read_csv(f)
        e, g = v["error_pct"].abs(), v["error_gpu_only_pct"].abs()
        print(f"| {reg} | {len(v)} | {e.mean():.1f}% / {e.max():.1f}% | {g.mean():.1f}% / {g.max():.1f}% |")
        ds = pd.read_csv(d / f"deepspeed-{reg}.csv") if (d / f"deepspeed-{reg}.csv").exists() else None
        for cfg, c in v.groupby("config", sort=False):
            ms = c.set_index("schedule")["measured_ms"]
            best = ms[[p for p in PUBLISHED if p in ms]].idxmin()
            dsm = None
            if ds is not None and cfg in set(ds["config"]):
                dsm = float(ds.set_index("config").at[cfg, "step_ms"])
            rows.append((reg, cfg, ms["moesched"], ms["vanilla"] / ms["moesched"], best,
                         ms[best] / ms["moesched"], None if dsm is None else dsm / ms["moesched"]))
    print("\n| regime | config | moesched ms | vs vanilla | best published | vs best | vs DeepSpeed |\n"
          "|---|---|---|---|---|---|---|")
    for reg, cfg, m, sv, best, sb, sd in rows:
        print(f"| {reg} | {cfg} | {m:.1f} | {sv:.2f}x | {best} | {sb:.2f}x | {'-' if sd is None else f'{sd:.2f}x'} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/gpu/session5")
