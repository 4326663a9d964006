"""FinDEP on paper: its cost model with its own fitted lines (Fig. 7, testbed A, 8 x RTX
A6000, 48 GB) and its two models, against its Table 5 (FinDEP over PPPipe) and Table 7
(exposed communication), plus Algorithm 1's solve time and the gap to the CP-SAT optimum.

    python benchmarks/findep_paper.py [--out results/bench/findep_paper.txt]
"""
from __future__ import annotations

import argparse
import io
import time
from contextlib import redirect_stdout

from moesched.fileio import write_atomic
from moesched.findep import (ORDERS, PAPER_COSTS, PAPER_MODELS, DepConfig, DepModel, makespan_ms, memory_bound,
                             task_times, throughput_tokens_s)
from moesched.findep_solve import algorithm1, naive_dep, own_search, paper_times, pppipe, schedule_of

GPU_BYTES = 48e9  # RTX A6000
#: Table 5's testbed-A rows (tokens/s): (model, S) -> (PPPipe, FinDEP).
TABLE5_A = {("DeepSeek-V2", 4096): (44.21, 51.47), ("Qwen3-235B-A22B", 8192): (8.57, 13.14)}
#: Table 7, DeepSeek-V2 on A, exposed communication (ms): S -> (naive DEP, PPPipe, FinDEP).
TABLE7 = {4096: (905.49, 528.94, 309.81), 2048: (536.22, 144.32, 52.60), 1024: (194.95, 188.65, 97.33)}


def solve_all(m: DepModel, split: tuple[int, int]) -> dict:
    ag, eg = split
    times = paper_times(m, PAPER_COSTS[split], ag, eg)
    mm = memory_bound(m, ag, GPU_BYTES)
    t0 = time.perf_counter()
    f = algorithm1(m, times, ag, mm)
    alg_s = time.perf_counter() - t0
    out = {"findep": f, "pppipe": pppipe(m, times, ag, mm), "naive": naive_dep(m, times, ag, mm)}
    out["moesched"] = own_search(m, times, ag, mm, f)
    rate = {k: throughput_tokens_s(m, ag, r.config, r.makespan_ms) for k, r in out.items()}
    exposed = {k: schedule_of(times, m.layers, r).exposed_comm_ms() for k, r in out.items()}
    return {"res": out, "rate": rate, "exposed": exposed, "alg_s": alg_s, "m_max": mm}


def table5() -> None:
    print("Table 5 (testbed A): throughput, tokens/s, every (ag, eg) split with a fitted A2E line")
    print(f"{'model':16} {'S':>5} {'ag,eg':>5} {'M_max':>5} {'naive':>8} {'PPPipe':>8} {'FinDEP':>8} {'moesched':>8}"
          f" {'FinDEP/PPPipe':>13}  published (PPPipe -> FinDEP)  FinDEP config")
    for (name, S), (pub_p, pub_f) in TABLE5_A.items():
        m = PAPER_MODELS[name].with_seq(S)
        for split in PAPER_COSTS:
            r = solve_all(m, split)
            c = r["res"]["findep"].config
            print(f"{name:16} {S:>5} {split[0]},{split[1]:<3} {r['m_max']:>5} {r['rate']['naive']:>8.0f} "
                  f"{r['rate']['pppipe']:>8.0f} {r['rate']['findep']:>8.0f} {r['rate']['moesched']:>8.0f} "
                  f"{r['rate']['findep'] / r['rate']['pppipe']:>12.2f}x  {pub_p} -> {pub_f} ({pub_f / pub_p:.2f}x)"
                  f"  m_a={c.m_a} r1={c.r1} r2={c.r2} {c.order} ({r['alg_s']:.2f} s)")


def table7() -> None:
    print("\nTable 7 (DeepSeek-V2, testbed A): exposed communication, ms, at FinDEP's best split")
    print(f"{'S':>5} {'ag,eg':>5} {'naive':>9} {'PPPipe':>9} {'FinDEP':>9}   published naive / PPPipe / FinDEP")
    for S, pub in TABLE7.items():
        m = PAPER_MODELS["DeepSeek-V2"].with_seq(S)
        best = max(PAPER_COSTS, key=lambda sp: solve_all(m, sp)["rate"]["findep"])
        r = solve_all(m, best)
        e = r["exposed"]
        print(f"{S:>5} {best[0]},{best[1]:<3} {e['naive']:>9.1f} {e['pppipe']:>9.1f} {e['findep']:>9.1f}   "
              f"{pub[0]} / {pub[1]} / {pub[2]}")


def cpsat_gaps() -> None:
    from moesched.findep_cpsat import optimal_makespan_ms
    print("\nSmall instances (DeepSeek-V2, S = 1024, 2 layers): the better of ASAS and AASS against CP-SAT's optimum")
    m = PAPER_MODELS["DeepSeek-V2"].with_seq(1024, layers=2)
    gaps = []
    for split, c in PAPER_COSTS.items():
        for m_a, r1, r2 in ((1, 2, 2), (2, 2, 3), (1, 3, 2), (1, 4, 2)):
            tt = task_times(m, c, split[0], split[1], m_a, r2)
            heur = min(makespan_ms(tt, m.layers, DepConfig(m_a, r1, r2, o)).makespan_ms for o in ORDERS)
            opt, proven = optimal_makespan_ms(tt, m.layers, r1, r2)
            gaps.append(100 * (heur - opt) / opt)
            print(f"  ag,eg={split} m_a={m_a} r1={r1} r2={r2}: heuristic {heur:.2f} ms, optimum {opt:.2f} ms"
                  f"{'' if proven else ' (not proven)'}, gap {gaps[-1]:.2f}%")
    print(f"  mean gap {sum(gaps) / len(gaps):.2f}%, worst {max(gaps):.2f}%")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="findep_paper.py")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    buf = io.StringIO()
    with redirect_stdout(buf):
        table5()
        table7()
        cpsat_gaps()
    print(buf.getvalue(), end="")
    if a.out:
        write_atomic(a.out, buf.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
