"""The CSV that ``moesched validate`` writes: its columns (:data:`FIELDS`), the measured
columns of a plan's repeats, and the file itself (:class:`CsvTable`), rewritten atomically
each time a plan is measured, so that a run cut short (a time limit, a lost machine) keeps
every plan it measured, with the repeats it reached. Torch-free."""
from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass

from moesched.errors import MoeschedError
from moesched.fileio import write_atomic

#: Columns of validate's CSV, one row per (configuration, schedule, issue mode). Times in ms;
#: errors (predicted - measured) / measured in %; measured_ms: the median over every step of
#: every repeat; repeat_ms, repeat_probe_us, repeat_steal_pct, repeat_others_pct: each
#: repeat's median step (ms), the host probe taken before it (µs), and the share of rank 0's
#: CPUs' time during its steps stolen by the hypervisor and busy with other processes (%,
#: empty off Linux), in run order, ";"-separated.
FIELDS = ["regime", "config", "schedule", "predicted_ms", "measured_ms", "error_pct", "task_error_pct",
          "predicted_exposed_ms", "predicted_gpu_only_ms", "error_gpu_only_pct", "predicted_routed_ms",
          "error_routed_pct", "predicted_bench_ms", "error_bench_pct", "max_recv_share", "repeats",
          "measured_spread_pct", "knobs", "plan_hash", "issue", "predicted_single_pair_ms",
          "error_single_pair_pct", "last_call_ms",
          "last_setup_ms", "last_finish_ms", "last_trace_ms",
          "host_probe_us", "host_factor", "predicted_probe_ms", "error_probe_pct",
          "predicted_kindline_ms", "error_kindline_pct", "predicted_ops_ms", "error_ops_pct",
          "skew", "max_expert_load", "predicted_uneven_ms", "error_uneven_pct", "runs_hash",
          "repeat_ms", "repeat_probe_us", "repeat_steal_pct", "repeat_others_pct"]


def check_csv(path: str) -> None:
    """Refuse (before any work) a CSV to append to whose header is not :data:`FIELDS`: rows
    written under another header would land in the wrong columns."""
    try:
        with open(path, newline="") as f:
            head = f.readline().strip()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as e:
        raise MoeschedError(f"--out {path}: cannot read it to append: {e}") from None
    if head and head.split(",") != FIELDS:
        raise MoeschedError(f"--out {path} has other columns than this validate writes (another version's CSV?); "
                            f"name a new file")


@dataclass(frozen=True)
class RepeatHost:
    """The host around one repeat of a plan: the host probe just before it (the slowest
    rank's, µs) and, on rank 0's CPUs during its steps, the share of time stolen by the
    hypervisor and busy with other processes (%; None off Linux)."""

    probe_us: float
    steal_pct: float | None = None
    others_pct: float | None = None


def err_pct(pred_ms: float, measured_ms: float) -> float:
    """(predicted - measured) / measured, %, rounded as the CSV keeps it."""
    return round((pred_ms - measured_ms) / measured_ms * 100, 3)


def _joined(xs: list[float | None], fmt: str) -> str:
    return ";".join("" if x is None else format(x, fmt) for x in xs)


def repeat_values(cell: object) -> list[float | None]:
    """The values of a per-repeat column's cell (``repeat_ms`` and the like), in run order:
    None for a repeat that left it empty; [] for an empty or missing cell (NaN from pandas)."""
    text = "" if cell is None or cell != cell else str(cell)  # NaN != NaN
    return [float(x) if x.strip() else None for x in text.split(";")] if text.strip() else []


def measured_columns(runs: list[list[float]], hosts: list[RepeatHost]) -> dict:
    """The columns a plan's repeats set: ``runs`` holds each repeat's timed step times (ms),
    ``hosts`` what the host did around each (:class:`RepeatHost`, possibly empty)."""
    med = statistics.median([t for run in runs for t in run])
    meds = [statistics.median(run) for run in runs]
    return {"measured_ms": round(med, 4), "repeats": len(runs),
            "measured_spread_pct": round((max(meds) - min(meds)) / med * 100, 3),
            "repeat_ms": _joined(meds, ".4f"), "repeat_probe_us": _joined([h.probe_us for h in hosts], ".3f"),
            "repeat_steal_pct": _joined([h.steal_pct for h in hosts], "g"),
            "repeat_others_pct": _joined([h.others_pct for h in hosts], "g")}


def remeasured(row: dict, runs: list[list[float]], hosts: list[RepeatHost]) -> dict:
    """``row`` after more repeats: its measured columns redone from ``runs`` and ``hosts`` and
    every error_X_pct against its predicted_X_ms (error_pct against predicted_ms) redone
    against the new median. The predictions stay (the probe-priced one is the caller's)."""
    new = dict(row, **measured_columns(runs, hosts))
    med = statistics.median([t for run in runs for t in run])
    for key in FIELDS:
        if key.startswith("error_") and key.endswith("_pct"):
            mid = key[len("error_"):-len("_pct")]
            pred = new.get(f"predicted_{mid}_ms" if mid else "predicted_ms")
            if pred not in (None, ""):
                new[key] = err_pct(float(pred), med)
    return new


class CsvTable:
    """Validate's ``--out``: the rows it held before this run (kept as they were), then one
    row per measured plan, the whole file rewritten atomically at each :meth:`put`."""

    def __init__(self, path: str):
        check_csv(path)
        self.path = path
        self.rows: dict[tuple, dict] = {}  # (plan index, issue mode) -> row, in measuring order
        try:
            with open(path, newline="") as f:
                self.before = f.read()
        except FileNotFoundError:
            self.before = ""
        if not self.before.strip():
            out = io.StringIO()
            csv.DictWriter(out, FIELDS).writeheader()
            self.before = out.getvalue()
        elif not self.before.endswith("\n"):
            self.before += "\r\n"

    def put(self, key: tuple, row: dict) -> None:
        """Set the row of ``key`` (a plan and issue mode) and rewrite the file."""
        self.rows[key] = row
        out = io.StringIO()
        csv.DictWriter(out, FIELDS).writerows(self.rows.values())
        write_atomic(self.path, self.before + out.getvalue())
