"""Before/after table of ``scripts/gpu_host9.sh`` output: per (config, schedule) the median
step and host issue time of the interleaved before and after runs, and their ratio::

    python scripts/host_ab_report.py results/gpu/session9/ab-run7
"""
from __future__ import annotations

import glob
import json
import os
import statistics
import sys


def load(folder: str, tag: str) -> dict:
    out: dict = {}
    for path in sorted(glob.glob(os.path.join(folder, f"sections-{tag}*.json"))):
        for r in json.load(open(path)):
            out.setdefault((r["config"], r["schedule"]), []).append((r["step_ms"], r["host_issue_ms"]))
    return out


def main(folder: str) -> None:
    before, after = load(folder, "before"), load(folder, "after")
    print("| config | schedule | step before (ms) | step after (ms) | speedup | host issue before (ms) | after (ms) |")
    print("|---|---|---|---|---|---|---|")
    for key in before:
        if key not in after:
            continue
        sb, hb = (statistics.median(v) for v in zip(*before[key]))
        sa, ha = (statistics.median(v) for v in zip(*after[key]))
        print(f"| {key[0]} | {key[1]} | {sb:.1f} | {sa:.1f} | {sb / sa:.2f}x | {hb:.1f} | {ha:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/gpu/session9/ab-run7")
