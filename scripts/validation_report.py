"""Tables and figures of the GPU validation runs (results/gpu/*.csv) for docs/validation.md.

    python scripts/validation_report.py > /tmp/tables.md

Writes docs/figures/validation_scatter.png (predicted vs measured step time) and
docs/figures/validation_speedups.png (measured speedup over vanilla per regime); prints
markdown tables.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from moesched.fileio import write_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RES = ROOT / "results" / "gpu"  # or the folder given as the first argument (a session's runs)
REGIMES = ("nvlink", "hostmem", "2nodes")
PUBLISHED = ("tutel", "pipemoe", "schemoe", "fsmoe", "lina", "flowmoe")


def load() -> tuple[pd.DataFrame, pd.DataFrame]:
    global RES
    if len(sys.argv) > 1:
        RES = Path(sys.argv[1])
    v = pd.concat([pd.read_csv(RES / f"validation-{r}.csv") for r in REGIMES], ignore_index=True)
    ds = pd.concat([pd.read_csv(RES / f"deepspeed-{r}.csv") for r in REGIMES], ignore_index=True)
    return v, ds


def speedups(v: pd.DataFrame, ds: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (reg, cfg), g in v.groupby(["regime", "config"], sort=False):
        t = g.set_index("schedule")["measured_ms"]
        best = min(PUBLISHED, key=lambda s: t[s])
        d = ds[(ds.regime == reg) & (ds.config == cfg)]["step_ms"]
        dsm = float(d.iloc[0]) if len(d) else float("nan")
        rows.append({"regime": reg, "config": cfg, "vanilla_ms": t["vanilla"], "best_published": f"{best} {t[best]:.1f}",
                     "flowmoe_ms": t["flowmoe"], "moesched_ms": t["moesched"], "deepspeed_ms": dsm,
                     "moesched/vanilla": t["vanilla"] / t["moesched"], "moesched/best": t[best] / t["moesched"],
                     "moesched/deepspeed": dsm / t["moesched"], "flowmoe/vanilla": t["vanilla"] / t["flowmoe"]})
    return pd.DataFrame(rows)


def errors(v: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for reg, g in v.groupby("regime", sort=False):
        e = g["error_pct"].abs()
        rho = [x["predicted_ms"].corr(x["measured_ms"], method="spearman") for _, x in g.groupby("config")]
        rows.append({"regime": reg, "runs": len(g), "mean |err| %": e.mean(), "max |err| %": e.max(),
                     "mean task |err| %": g["task_error_pct"].mean(), "Spearman (mean over configs)": sum(rho) / len(rho)})
    e = v["error_pct"].abs()
    rows.append({"regime": "all", "runs": len(v), "mean |err| %": e.mean(), "max |err| %": e.max(),
                 "mean task |err| %": v["task_error_pct"].mean(), "Spearman (mean over configs)": float("nan")})
    return pd.DataFrame(rows)


def _save(fig: plt.Figure, name: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomic(ROOT / "docs" / "figures" / name, buf.getvalue())


def figures(v: pd.DataFrame, sp: pd.DataFrame) -> None:
    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    for reg, mark in zip(REGIMES, "os^"):
        g = v[v.regime == reg]
        ax.scatter(g.measured_ms, g.predicted_ms, marker=mark, alpha=0.7, label=reg)
    lim = [0, 1.05 * max(v.measured_ms.max(), v.predicted_ms.max())]
    ax.plot(lim, lim, "k--", lw=1, label="predicted = measured")
    ax.set(xlim=lim, ylim=lim, xlabel="measured step time (ms)", ylabel="predicted step time (ms)",
           title="moesched on 4 x H200: predicted vs measured (144 runs)")
    ax.legend()
    _save(fig, "validation_scatter.png")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), sharey=True)
    for ax, reg in zip(axes, REGIMES):
        g = sp[sp.regime == reg].reset_index(drop=True)
        x = range(len(g))
        w = 0.27
        ax.bar([i - w for i in x], g["flowmoe/vanilla"], w, label="FlowMoE policy")
        ax.bar(list(x), g["moesched/vanilla"], w, label="moesched plan")
        ax.bar([i + w for i in x], g["vanilla_ms"] / g["deepspeed_ms"], w, label="DeepSpeed-MoE")
        ax.axhline(1.0, color="k", lw=1)
        ax.set_xticks(list(x), g.config, rotation=30)
        ax.set_title(f"{reg}: speedup over vanilla EP (measured)")
    axes[0].set_ylabel("speedup over vanilla EP (x)")
    axes[0].legend()
    _save(fig, "validation_speedups.png")


def markdown(df: pd.DataFrame) -> str:
    """A pipe table (no extra dependency)."""
    def cell(x: object) -> str:
        return f"{x:.2f}" if isinstance(x, float) else str(x)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    v, ds = load()
    sp = speedups(v, ds)
    figures(v, sp)
    print(markdown(errors(v)))
    print()
    print(markdown(sp))


if __name__ == "__main__":
    main()
