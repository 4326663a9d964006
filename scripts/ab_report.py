"""Tables of the session-3 A/B runs (``scripts/gpu_ab.sh``) from their CSVs, as markdown.

    python scripts/ab_report.py [DIR]     # default results/gpu/session3

Issue modes: ``DIR/ab-REGIME.csv`` (rows with issue single and threads, eager attention).
CUDA graphs: ``DIR/graphs2/graphs-REGIME-G.csv`` (G = 1 graphs, 0 eager; issue single).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

REGIMES = ("nvlink", "hostmem", "2nodes")


def table(df: pd.DataFrame, col: str, a: str, b: str) -> str:
    p = df.pivot_table(index=["regime", "config", "schedule"], columns=col, values="measured_ms").reset_index()
    p["ratio"] = p[a] / p[b]
    lines = [f"| regime | config | schedule | {a} ms | {b} ms | {a}/{b} |", "|---|---|---|---|---|---|"]
    for r in p.itertuples(index=False):
        lines.append(f"| {r.regime} | {r.config} | {r.schedule} | {getattr(r, a):.1f} | {getattr(r, b):.1f} | "
                     f"{r.ratio:.2f} |")
    return "\n".join(lines)


def errors(df: pd.DataFrame, col: str) -> str:
    lines = [f"| regime | {col} | runs | mean abs error % | max abs error % |", "|---|---|---|---|---|"]
    for (reg, v), g in df.groupby(["regime", col]):
        e = g["error_pct"].abs()
        lines.append(f"| {reg} | {v} | {len(g)} | {e.mean():.1f} | {e.max():.1f} |")
    return "\n".join(lines)


def main() -> None:
    d = Path(sys.argv[1] if len(sys.argv) > 1 else "results/gpu/session3")
    ab = pd.concat([pd.read_csv(d / f"ab-{r}.csv") for r in REGIMES], ignore_index=True)
    print("## Issue modes (eager attention)\n")
    print(table(ab, "issue", "threads", "single"), "\n")
    print(errors(ab, "issue"), "\n")
    gs = []
    for r in REGIMES:
        for g in (0, 1):
            x = pd.read_csv(d / "graphs2" / f"graphs-{r}-{g}.csv")
            x["regime"], x["graphs"] = r, "graphs" if g else "eager"
            gs.append(x)
    gr = pd.concat(gs, ignore_index=True)
    print("## CUDA graphs of the attention block (issue single)\n")
    print(table(gr, "graphs", "graphs", "eager"), "\n")
    print(errors(gr, "graphs"))


if __name__ == "__main__":
    main()
