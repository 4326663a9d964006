"""Markdown tables of validation runs: prediction error and measured speedups.

CPU only, any machine, repository root. Each RUN_FOLDER is one regime's folder as written by
``benchmarks/gpu_regimes.sh`` (``validation-REG.csv``, and ``deepspeed-REG.csv`` where the
DeepSpeed-MoE peer ran)::

    python benchmarks/validation_report.py results/h200x4/nvlink results/h200x4/hostmem results/h200x4/2nodes
    python benchmarks/validation_report.py results/h200x2/* --figures /tmp/fig   # also two PNGs

Prints (1) per regime the mean / max |error| of the predicted step time, the same without the
host model (``error_gpu_only_pct``), and the Spearman rank correlation of the schedules per
config; (2) per (regime, config) the measured step of vanilla EP, the best published policy,
moesched's plan and DeepSpeed-MoE, and moesched's speedup over each (> 1: moesched faster).
With ``--figures DIR`` also writes ``DIR/validation_scatter.png`` (predicted against measured)
and ``DIR/validation_speedups.png`` (measured speedup over vanilla EP per regime).
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import pandas as pd

PUBLISHED = ("tutel", "pipemoe", "schemoe", "fsmoe", "lina", "flowmoe")


def load(folders: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All validation rows and all DeepSpeed rows of the folders."""
    v = pd.concat([pd.read_csv(f) for d in folders for f in sorted(d.glob("validation-*.csv"))], ignore_index=True)
    ds_files = [f for d in folders for f in sorted(d.glob("deepspeed-*.csv"))]
    ds = pd.concat([pd.read_csv(f) for f in ds_files], ignore_index=True) if ds_files else \
        pd.DataFrame(columns=["config", "regime", "step_ms"])
    return v, ds


def errors(v: pd.DataFrame) -> pd.DataFrame:
    """Per regime and over all runs: step-time error with and without the host model (%)."""
    rows = []
    for reg, g in list(v.groupby("regime", sort=False)) + [("all", v)]:
        e, gpu = g["error_pct"].abs(), g["error_gpu_only_pct"].abs()
        rho = [x["predicted_ms"].rank().corr(x["measured_ms"].rank()) for _, x in g.groupby("config")]  # Spearman
        rows.append({"regime": reg, "runs": len(g), "mean |err| %": e.mean(), "max |err| %": e.max(),
                     "GPU-only mean |err| %": gpu.mean(), "Spearman": sum(rho) / len(rho)})
    return pd.DataFrame(rows)


def speedups(v: pd.DataFrame, ds: pd.DataFrame) -> pd.DataFrame:
    """Per (regime, config): measured step (ms) and moesched's speedup over each peer."""
    rows = []
    for (reg, cfg), g in v.groupby(["regime", "config"], sort=False):
        t = g.set_index("schedule")["measured_ms"]
        best = min((p for p in PUBLISHED if p in t), key=lambda s: t[s])
        d = ds[(ds.regime == reg) & (ds.config == cfg)]["step_ms"]
        dsm = float(d.iloc[0]) if len(d) else float("nan")
        rows.append({"regime": reg, "config": cfg, "vanilla ms": t["vanilla"], "best published": f"{best} {t[best]:.1f}",
                     "moesched ms": t["moesched"], "DeepSpeed ms": dsm, "x vanilla": t["vanilla"] / t["moesched"],
                     "x best": t[best] / t["moesched"], "x DeepSpeed": dsm / t["moesched"],
                     "flowmoe x vanilla": t["vanilla"] / t["flowmoe"] if "flowmoe" in t else float("nan")})
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    """A pipe table (no extra dependency)."""
    def cell(x: object) -> str:
        return f"{x:.2f}" if isinstance(x, float) else str(x)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def figures(v: pd.DataFrame, sp: pd.DataFrame, out: Path) -> None:
    """The scatter of predicted against measured and the speedup bars, as PNG files in ``out``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moesched.fileio import write_atomic

    def save(fig, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        write_atomic(out / name, buf.getvalue())

    regimes = list(dict.fromkeys(v.regime))
    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    for reg, mark in zip(regimes, "os^dv"):
        g = v[v.regime == reg]
        ax.scatter(g.measured_ms, g.predicted_ms, marker=mark, alpha=0.7, label=reg)
    lim = [0, 1.05 * max(v.measured_ms.max(), v.predicted_ms.max())]
    ax.plot(lim, lim, "k--", lw=1, label="predicted = measured")
    ax.set(xlim=lim, ylim=lim, xlabel="measured step time (ms)", ylabel="predicted step time (ms)",
           title=f"predicted vs measured ({len(v)} runs)")
    ax.legend()
    save(fig, "validation_scatter.png")
    fig, axes = plt.subplots(1, len(regimes), figsize=(4.7 * len(regimes), 4.2), sharey=True, squeeze=False)
    for ax, reg in zip(axes[0], regimes):
        g = sp[sp.regime == reg].reset_index(drop=True)
        x, w = range(len(g)), 0.27
        ax.bar([i - w for i in x], g["flowmoe x vanilla"], w, label="FlowMoE policy")
        ax.bar(list(x), g["x vanilla"], w, label="moesched plan")
        ax.bar([i + w for i in x], g["vanilla ms"] / g["DeepSpeed ms"], w, label="DeepSpeed-MoE")
        ax.axhline(1.0, color="k", lw=1)
        ax.set_xticks(list(x), g.config, rotation=30)
        ax.set_title(f"{reg}: speedup over vanilla EP (measured)")
    axes[0][0].set_ylabel("speedup over vanilla EP (x)")
    axes[0][0].legend()
    save(fig, "validation_speedups.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="run folders holding validation-REG.csv")
    ap.add_argument("--figures", type=Path, help="also write the two PNG figures into this folder")
    a = ap.parse_args()
    v, ds = load(a.folders)
    sp = speedups(v, ds)
    print(markdown(errors(v)))
    print()
    print(markdown(sp))
    if a.figures:
        figures(v, sp, a.figures)


if __name__ == "__main__":
    main()
