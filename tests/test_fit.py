"""moesched.costs: line and piecewise fits on synthetic timings, check() flags outliers."""
from __future__ import annotations

import random

import pytest

from moesched.costs import build, fit
from moesched.costs.check import check
from moesched.errors import MoeschedError
from moesched.profile import COMPUTE_KINDS, Cost, Profile

MB = 2**20


def _noisy(alpha: float, beta: float, xs: list[float], noise: float, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [(alpha + beta * x) * (1.0 + rng.uniform(-noise, noise)) for x in xs]


def test_line_recovers_alpha_beta_with_noise() -> None:
    xs = [64 * 2**10 * 2**i for i in range(14)]  # 64 KB .. 512 MB
    alpha, beta = 25.0, 3.3e-6
    ts = _noisy(alpha, beta, xs, noise=0.02)
    line = fit.fit_line(xs, ts)
    assert line.alpha_us == pytest.approx(alpha, rel=0.05)
    assert line.beta == pytest.approx(beta, rel=0.03)
    assert line.r2 > 0.999
    cost = fit.fit_cost(xs, ts)
    assert isinstance(cost, Cost) and cost.r2 is not None and cost.r2 > 0.999
    assert len(cost.points) == len(xs)
    assert cost(xs[3]) == pytest.approx(ts[3])  # interpolation returns the measured point


def test_exact_line_and_negative_slope_clamped() -> None:
    line = fit.fit_line([1.0, 2.0, 3.0], [12.0, 14.0, 16.0])
    assert (line.alpha_us, line.beta, line.r2) == pytest.approx((10.0, 2.0, 1.0))
    flat = fit.fit_line([1.0, 2.0, 3.0], [10.0, 9.0, 8.0])
    assert flat.beta == 0.0 and flat.alpha_us > 8.0
    with pytest.raises(MoeschedError):
        fit.fit_line([], [])
    origin = fit.fit_line([1.0, 2.0, 4.0], [1.0, 3.0, 7.0])  # unconstrained: -1 + 2x
    assert origin.alpha_us == 0.0 and 1.0 < origin.beta < 2.0


def test_piecewise_handles_kink() -> None:
    # Latency-bound below 1 MB (flat 20 µs), bandwidth-bound above (60 + 2e-5 µs/B).
    xs = [2**k for k in range(14, 28)]
    ts = [20.0 + 1e-6 * x if x < MB else 60.0 + 2e-5 * x for x in xs]
    res = fit.fit(xs, ts)
    assert res.info["model"] == "piecewise"
    assert res.info["breakpoint_x"] == MB
    assert res.cost.alpha_us == pytest.approx(60.0, rel=1e-6)
    assert res.cost.beta_us_per_unit == pytest.approx(2e-5, rel=1e-6)
    assert res.info["small_alpha_us"] == pytest.approx(20.0, rel=1e-6)
    assert res.cost.r2 == pytest.approx(1.0)
    # beyond the measured range the large-regime line extrapolates
    assert res.cost(2**29) == pytest.approx(60.0 + 2e-5 * 2**29)
    one = fit.fit_line(xs, ts)
    assert one.max_rel_err > 0.10  # a single line misfits the kink


def test_merge_points_takes_medians() -> None:
    pts = fit.merge_points([100.0, 100.5, 101.0, 200.0], [1.0, 3.0, 2.0, 5.0])
    assert pts == [(100.5, 2.0), (200.0, 5.0)]


def _profile(compute_pts: list[tuple[float, float]], a2a_pts: list[tuple[float, float]]) -> Profile:
    compute = {k: compute_pts for k in COMPUTE_KINDS}
    comm = {"all_to_all": {"intra": a2a_pts}, "all_reduce": {"intra": a2a_pts}}
    hw = {"gpu": "test", "nodes": 1, "gpus_per_node": 2, "gpu_memory_bytes": 1, "regime": "test"}
    return build.build_profile("t", "synthetic", hw, {"command": "test"}, compute, comm, 1.2, 1.0)


def test_check_flags_outlier() -> None:
    xs = [1e9 * 2**i for i in range(8)]
    good = [(x, 5.0 + 1e-9 * x) for x in xs]
    bad = list(good)
    bad[4] = (xs[4], good[4][1] * 1.5)  # one measurement 50 % off the line
    prof = _profile(good, bad)
    rows = {r.key: r for r in check(prof)}
    assert set(rows) == {f"compute.{k}" for k in COMPUTE_KINDS} | {"comm.all_to_all.intra",
                                                                      "comm.all_reduce.intra"}
    assert all(rows[f"compute.{k}"].ok for k in COMPUTE_KINDS)
    assert rows["compute.attn_fwd"].r2 == pytest.approx(1.0)
    flagged = rows["comm.all_to_all.intra"].flagged
    assert [f[0] for f in flagged] == [xs[4]]
    assert flagged[0][3] > 10.0
    assert prof.meta["fits"]["compute.attn_fwd"]["model"] == "line"
    assert prof.compute_slowdown == 1.2


def test_build_profile_roundtrip(tmp_path) -> None:
    pts = [(1e6 * 2**i, 10.0 + 2**i) for i in range(6)]
    prof = _profile(pts, pts)
    path = tmp_path / "p.json"
    prof.save(path)
    again = Profile.load(path)
    assert again.digest() == prof.digest()
    assert again.kind == "measured"
    with pytest.raises(MoeschedError):
        build.build_profile("t", "", prof.hardware, {}, {}, {}, 1.0, 1.0)


def test_consensus_is_median_of_shapes() -> None:
    a = [(1.0, 10.0), (3.0, 30.0)]
    b = [(2.0, 40.0), (4.0, 80.0)]
    c = [(1.0, 12.0), (4.0, 42.0)]
    pts = build.consensus([a, b, c])
    assert [x for x, _ in pts] == [1.0, 2.0, 3.0, 4.0]
    assert pts[0][1] == pytest.approx(11.0)  # a and c cover x=1
    assert pts[1][1] == pytest.approx(22.0)  # median of a(2)=20, b(2)=40, c(2)=22
    assert build.consensus([a]) == a
