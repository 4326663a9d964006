"""What ``moesched validate`` prints after its runs, from its CSV rows
(:mod:`moesched.validation_csv`): the step-time error of every pricing variant, each
repeat's, the run's noise floor and the rank correlation of schedules. Torch-free (pandas)."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import pandas as pd

from moesched.noisefloor import floors
from moesched.validation_csv import repeat_values


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rank correlation of two equally long pandas Series: the Pearson
    correlation of their ranks (ties get their average rank), without scipy."""
    return float(a.rank().corr(b.rank()))


def _floor_line(df: pd.DataFrame) -> None:
    """Print the floor of any deterministic model's error on this run: schedules that solved
    to the same steps (``runs_hash``), each measured (:mod:`moesched.noisefloor`)."""
    if "runs_hash" not in df:
        return
    groups = [list(g["measured_ms"]) for _, g in df.groupby(["regime", "issue", "runs_hash"])]
    twice = sum(len(g) > 1 for g in groups)
    if twice:
        mx, mean = floors(groups)
        print(f"  floor of any model on these measurements ({twice} plans run by several schedules): "
              f"max {mx:.2f} %, mean {mean:.2f} %")


#: Per-repeat host columns of the CSV, with how the summaries name them and their unit.
REPEAT_HOST = (("repeat_probe_us", "host probe", " µs"), ("repeat_steal_pct", "CPU stolen", " %"),
               ("repeat_others_pct", "CPU busy with other processes", " %"))


@dataclass(frozen=True)
class RepeatStats:
    """Per repeat in run order, over the rows: the mean and max |error| of the prediction
    against that repeat's medians (%), and the median of each per-repeat host column present
    in every row ({column: [value per repeat]})."""

    mean_err_pct: list[float]
    max_err_pct: list[float]
    host: dict[str, list[float]]


def repeat_stats(df: pd.DataFrame) -> RepeatStats | None:
    """:class:`RepeatStats` of the first n repeats (n: the fewest any row has); None without
    the per-repeat columns. The prediction is the same in every repeat, so a repeat whose
    error stands out measured a host running at another speed."""
    if "repeat_ms" not in df or "repeats" not in df:
        return None
    n = int(df["repeats"].astype(int).min())
    meds = [repeat_values(v)[:n] for v in df["repeat_ms"]]
    errs = [[abs(p - m[i]) / m[i] * 100 for p, m in zip(df["predicted_ms"], meds)] for i in range(n)]
    host = {col: med for col, _, _ in REPEAT_HOST if (med := _median_per_repeat(df, col, n))}
    return RepeatStats([statistics.fmean(e) for e in errs], [max(e) for e in errs], host)


def _repeat_line(df: pd.DataFrame) -> None:
    """Print, per repeat in run order, the mean |error| against that repeat's medians and the
    medians of the host columns (:func:`repeat_stats`): a host whose speed moved shows here."""
    st = repeat_stats(df)
    if st is None or len(st.mean_err_pct) < 2:
        return
    line = ", ".join(f"{e:.2f} %" for e in st.mean_err_pct)
    for col, what, unit in REPEAT_HOST:
        if col in st.host:
            line += f"; {what} " + ", ".join(f"{x:.1f}" for x in st.host[col]) + unit
    print(f"  each repeat in run order: mean {line}")


def _median_per_repeat(df: pd.DataFrame, col: str, n: int) -> list[float]:
    """Median over the rows of each of the first n ";"-separated values of ``col``; [] where
    the column is absent or any row lacks a value."""
    if col not in df:
        return []
    vals = [repeat_values(v) for v in df[col]]
    if not all(len(v) >= n and None not in v[:n] for v in vals):
        return []
    return [statistics.median(v[i] for v in vals) for i in range(n)]


def summarize(rows: list[dict]) -> None:
    """Print mean and max |error| of step time and the rank correlation of schedule orders."""
    df = pd.DataFrame(rows)
    err = df["error_pct"].abs()
    print(f"step time error over {len(df)} runs: mean {err.mean():.2f} %, max {err.max():.2f} %")
    if "repeats" in df and df["repeats"].max() > 1:
        sp = df["measured_spread_pct"]
        print(f"  measured spread over {int(df['repeats'].max())} interleaved repeats (range of their medians): "
              f"mean {sp.mean():.2f} %, max {sp.max():.2f} %")
        _repeat_line(df)
    _floor_line(df)
    if "error_gpu_only_pct" in df:
        e0 = df["error_gpu_only_pct"].abs()
        print(f"  without the host model (GPU costs only): mean {e0.mean():.2f} %, max {e0.max():.2f} %")
    if "error_single_pair_pct" in df:
        e7 = df["error_single_pair_pct"].abs()
        print(f"  one interference pair, no step setup/finish: mean {e7.mean():.2f} %, "
              f"max {e7.max():.2f} %")
    if "error_bench_pct" in df:
        eb = df["error_bench_pct"].abs()
        print(f"  with compute costs as micro-benchmarked (no in-situ factors): mean {eb.mean():.2f} %, "
              f"max {eb.max():.2f} %")
    if "error_probe_pct" in df and df["error_probe_pct"].notna().any():
        ep = df["error_probe_pct"].dropna().abs()
        print(f"  with the host priced by the probe (factor {df['host_factor'].min():.2f}-{df['host_factor'].max():.2f}): "
              f"mean {ep.mean():.2f} %, max {ep.max():.2f} % over {len(ep)} runs")
    for col, what in (("error_kindline_pct", "compute by the per-kind line where no shape curve"),
                      ("error_ops_pct", "compute by operator composition everywhere")):
        if col in df:
            e = df[col].abs()
            print(f"  {what}: mean {e.mean():.2f} %, max {e.max():.2f} %")
    if "error_routed_pct" in df:
        e1 = df["error_routed_pct"].abs()
        print(f"  with each step's measured routing (per-rank load): mean {e1.mean():.2f} %, max {e1.max():.2f} %")
    if "error_uneven_pct" in df and df["error_uneven_pct"].notna().any():
        e2 = df["error_uneven_pct"].dropna().abs()
        print(f"  with each step's per-expert load (max/mean {df['max_expert_load'].min():.2f}-"
              f"{df['max_expert_load'].max():.2f}): mean {e2.mean():.2f} %, max {e2.max():.2f} %")
    rhos = [spearman(g["predicted_ms"], g["measured_ms"]) for _, g in df.groupby(["regime", "config"])
            if len(g) > 2]
    if rhos:
        print(f"rank correlation of schedules (Spearman, per config): mean {statistics.fmean(rhos):.3f}, "
              f"min {min(rhos):.3f}")
    if "predicted_routed_ms" in df:
        rr = [spearman(g["predicted_routed_ms"], g["measured_ms"])
              for _, g in df.groupby(["regime", "config"]) if len(g) > 2]
        if rr:
            print(f"  with measured routing: mean {statistics.fmean(rr):.3f}, min {min(rr):.3f}")
