"""Held-out check (b) of the cluster model on real collectives, on any machine with at
least 4 free cores: gloo all-reduce and all-to-all on CPU timed at 2 and 4 ranks; the
intra tier calibrated on the 2-rank points predicts the 4-rank points
(``tests/test_cluster_scale.py`` asserts the same where the cores exist)::

    PYTHONPATH=. python benchmarks/gloo_scale.py [--out FILE.json]

Prints each size's error and the mean |error|, beside the model without a group-size term
(the 2-rank time taken for 4 ranks).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from moesched.collectives import CollectiveModel, Group, measured_curve  # noqa: E402
from moesched.fileio import write_atomic  # noqa: E402
from moesched.profile import Cost  # noqa: E402

Points = dict[str, list[tuple[int, float]]]


def _curve(points: list[tuple[int, float]]) -> Cost:
    pts = tuple((float(x), float(t)) for x, t in points)
    (x0, t0), (x1, t1) = pts[0], pts[-1]
    beta = max((t1 - t0) / (x1 - x0), 0.0)
    return Cost(max(t0 - beta * x0, 1.0), beta, pts)


def errors(two: Points, four: Points) -> tuple[list[float], list[float]]:
    """(model, no group-size term) relative errors of every 4-rank point."""
    model_e, naive_e = [], []
    for op in ("all_reduce", "all_to_all"):
        curve = measured_curve(_curve(two[op]), op, Group(2, 1, 2), "intra", hop_us=0.0)
        model = CollectiveModel({op: curve}, {op: curve})
        for (x, t4), (_, t2) in zip(four[op], two[op]):
            model_e.append((model.us(op, Group(4, 1, 4), x) - t4) / t4)
            naive_e.append((t2 - t4) / t4)
    return model_e, naive_e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gloo_scale.py")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import gloo_collectives
    two, four = gloo_collectives.measure(2), gloo_collectives.measure(4)
    model_e, naive_e = errors(two, four)
    mean = sum(map(abs, model_e)) / len(model_e)
    naive = sum(map(abs, naive_e)) / len(naive_e)
    print(f"cores {os.cpu_count()}; gloo 2 -> 4 ranks: mean |error| {mean:.3f} (no group-size term {naive:.3f}); "
          f"errors {[round(e, 3) for e in model_e]}")
    if a.out:
        write_atomic(a.out, json.dumps({"cores": os.cpu_count(), "two": two, "four": four, "errors": model_e,
                                        "naive_errors": naive_e, "mean_abs_error": mean,
                                        "naive_mean_abs_error": naive}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
