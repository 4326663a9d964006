"""Held-out check (b) of the cluster model on real collectives: gloo on CPU, calibrated on
2 ranks, predicting 4 ranks (one node, so the intra tier's group-size terms are checked).

Stated tolerance: mean |error| <= 35% over the sizes 1-16 MB, and better than the model
without a group-size term (the 2-rank time taken for 4 ranks). The CPU is gloo's "link":
with fewer cores than ranks, 4 processes share them, which the model (one link per rank)
does not know -- on 2 loaded cores it predicts 4 ranks 10-70% too fast (mean 47%, the
model without a group-size term 63%) -- so the check needs a core per rank."""
from __future__ import annotations

import os

import pytest

from moesched.collectives import CollectiveModel, Group, measured_curve
from moesched.profile import Cost

gloo = pytest.importorskip("gloo_collectives")  # tests/gloo_collectives.py (torch)


def _curve(points: list[tuple[int, float]]) -> Cost:
    pts = tuple((float(x), float(t)) for x, t in points)
    (x0, t0), (x1, t1) = pts[0], pts[-1]
    beta = max((t1 - t0) / (x1 - x0), 0.0)
    return Cost(max(t0 - beta * x0, 1.0), beta, pts)


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 4, reason="4 gloo ranks need 4 cores (the CPU is gloo's link)")
def test_gloo_two_ranks_predict_four() -> None:
    two, four = gloo.measure(2), gloo.measure(4)
    errors, naive = [], []
    for op in ("all_reduce", "all_to_all"):
        curve = measured_curve(_curve(two[op]), op, Group(2, 1, 2), "intra", hop_us=0.0)
        model = CollectiveModel({op: curve}, {op: curve})
        for (x, t4), (_, t2) in zip(four[op], two[op]):
            errors.append((model.us(op, Group(4, 1, 4), x) - t4) / t4)
            naive.append((t2 - t4) / t4)
    mean = sum(map(abs, errors)) / len(errors)
    mean_naive = sum(map(abs, naive)) / len(naive)
    print(f"gloo 2 -> 4 ranks: mean |error| {mean:.3f} (no group-size term: {mean_naive:.3f}); "
          f"errors {[round(e, 2) for e in errors]}")
    assert mean <= 0.35, (errors, two, four)
    assert mean < mean_naive, (errors, naive)
