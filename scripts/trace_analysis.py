"""Where the simulator misses, from the measured GPU traces (CPU only, any machine).

    python scripts/trace_analysis.py [--data DIR] > results/gpu/trace-analysis.txt

DIR holds, per regime R in nvlink, hostmem, 2nodes: ``R/h200x4-R.json`` (the profile the
run used), ``R/validation-R.csv`` and ``tr/traces/R_CONFIG_SCHEDULE_measured.json``; the
default unpacks ``results/gpu`` into a temporary folder. Every plan is rebuilt from the
profile with ``executor.validate.make_plan`` and must match the CSV's hash.

1. **Collective calibration** (out of sample): all-to-all and all-reduce costs scaled by the
   median measured/predicted ratio of the *vanilla* runs' collectives (which run alone),
   then all 48 runs per regime re-predicted.
2. **Compute stretch**: measured/benchmarked duration of every compute task against the
   fraction of it overlapped by a collective (rank 0), per regime and schedule.
"""
from __future__ import annotations

import argparse
import statistics
import tarfile
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from executor.validate import make_plan
from moesched.cluster import Cluster
from moesched.configs import load_configs
from moesched.graph import build
from moesched.plan import Plan
from moesched.profile import Cost, Profile
from moesched.sim import intersection_length, simulate, union_intervals
from moesched.trace import read_chrome_trace

ROOT = Path(__file__).resolve().parent.parent
REGIMES = ("nvlink", "hostmem", "2nodes")
SCHEDULES = ("vanilla", "tutel", "pipemoe", "schemoe", "fsmoe", "lina", "flowmoe", "moesched")
CFG = {c.name: c.model for c in load_configs(str(ROOT / "docs/validation_configs.json"))}


def unpack(res: Path) -> Path:
    d = Path(tempfile.mkdtemp(prefix="moesched-traces-"))
    for r in REGIMES:
        (d / r).mkdir()
        for src, dst in ((res / "as-measured" / f"h200x4-{r}.json", d / r / f"h200x4-{r}.json"),
                         (res / f"validation-{r}.csv", d / r / f"validation-{r}.csv")):
            dst.write_bytes(src.read_bytes())
        with tarfile.open(res / "traces" / f"traces-{r}.tgz") as t:
            t.extractall(d / "tr", filter="data")
    return d


def plan_for(data: Path, r: str, config: str, schedule: str) -> Plan:
    path = str(data / r / f"h200x4-{r}.json")
    p = Profile.load(path)
    return Plan.from_dict(make_plan((path, CFG[config].to_dict(), Cluster(p.nodes, p.gpus_per_node).to_dict(), schedule)))


def predict_ms(args: tuple) -> float:
    data, r, config, schedule, prof = args
    plan = plan_for(data, r, config, schedule)
    g = build(plan.model, plan.cluster, prof, plan.knobs)
    return simulate(g, {t: i for i, t in enumerate(plan.order)}, strict=True).makespan_us / 1e3


def measured(data: Path, r: str, config: str, schedule: str) -> pd.DataFrame:
    df = read_chrome_trace(data / "tr" / "traces" / f"{r}_{config}_{schedule}_measured.json").df
    return df[df["rank"] == 0]


def calibrate(data: Path, r: str, prof: Profile) -> tuple[Profile, dict]:
    pts: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for c in CFG:
        plan = plan_for(data, r, c, "vanilla")
        g = build(plan.model, plan.cluster, None, plan.knobs)
        m = measured(data, r, c, "vanilla")
        for name, st, en in zip(m.task, m.start_us, m.end_us):
            a = g.nodes[name]
            if a.get("op") in ("all_to_all", "all_reduce"):
                pts.setdefault((a["op"], a["scope"]), []).append((float(a["work"]), en - st))
    comm = {op: dict(by) for op, by in prof.comm.items()}
    factors = {}
    for (op, scope), xs in pts.items():
        k = statistics.median(t / prof.comm_us(op, scope, x) for x, t in xs)
        c = comm[op][scope]
        comm[op][scope] = Cost(c.alpha_us * k, c.beta_us_per_unit * k, tuple((x, y * k) for x, y in c.points), c.r2)
        factors[f"{op}.{scope}"] = round(k, 2)
    return replace(prof, comm=comm), factors


def stretch(data: Path, r: str, prof: Profile) -> list[tuple[str, float, float]]:
    rows = []
    for c in CFG:
        for s in SCHEDULES:
            plan = plan_for(data, r, c, s)
            g = build(plan.model, plan.cluster, prof, plan.knobs)
            m = measured(data, r, c, s)
            comm = union_intervals([[a, b] for a, b, res in zip(m.start_us, m.end_us, m.resource) if res != "compute"])
            for name, st, en, res, kind in zip(m.task, m.start_us, m.end_us, m.resource, m.kind):
                pred = g.nodes[name]["duration_us"]
                if res == "compute" and kind != "loss" and pred >= 50:
                    rows.append((s, intersection_length([(st, en)], comm) / max(en - st, 1e-9), (en - st) / pred))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    data = ap.parse_args().data or unpack(ROOT / "results" / "gpu")
    print("# python scripts/trace_analysis.py (measured traces of results/gpu, CPU re-prediction)")
    for r in REGIMES:
        prof = Profile.load(data / r / f"h200x4-{r}.json")
        d = pd.read_csv(data / r / f"validation-{r}.csv")
        bad = [(c, s) for c, s, h in zip(d.config, d.schedule, d.plan_hash) if plan_for(data, r, c, s).hash[:12] != h]
        assert not bad, f"plans differ from the run's: {bad[:3]}"
        cal, factors = calibrate(data, r, prof)
        with ProcessPoolExecutor(2) as ex:
            d["pred_cal_ms"] = list(ex.map(predict_ms, [(data, r, c, s, cal) for c, s in zip(d.config, d.schedule)]))
        err = (d.pred_cal_ms - d.measured_ms).abs() / d.measured_ms * 100
        print(f"\n## {r}\ncollective factors from the vanilla runs: {factors}")
        print(f"step-time |error|: as run mean {d.error_pct.abs().mean():.1f} % max {d.error_pct.abs().max():.1f} %;"
              f" calibrated mean {err.mean():.1f} % max {err.max():.1f} %")
        rows = stretch(data, r, prof)
        frac = np.array([f for _, f, _ in rows])
        ratio = np.array([q for _, _, q in rows])
        coef = np.linalg.lstsq(np.vstack([np.ones_like(frac), frac]).T, ratio, rcond=None)[0]
        print(f"compute measured/benchmarked: {len(rows)} tasks; least squares {coef[0]:.2f} + {coef[1]:.2f} * "
              f"overlapped fraction; median {np.median(ratio[frac < 0.1]):.2f} when not overlapped, "
              f"{np.median(ratio[frac > 0.9]):.2f} when overlapped; profile compute_slowdown {prof.compute_slowdown:.2f}")
        for s in SCHEDULES:
            sel = np.array([x == s for x, _, _ in rows])
            print(f"    {s:9s} median ratio {np.median(ratio[sel]):.2f}, mean overlapped fraction {frac[sel].mean():.2f}")


if __name__ == "__main__":
    main()
