"""In-situ calibration of a measured profile (moesched.costs.calibrate): compute factors from
tasks timed inside executor steps scale the micro-benchmarks' costs, and survive a refit."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from moesched.costs.build import refit
from moesched.costs.calibrate import INSITU_KINDS, MIN_SAMPLES, compute_factors, with_host, without_compute_factors
from moesched.cluster import Cluster
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.configs import load_configs
from moesched.profile import Profile

PROF = Profile.load("h200x4-nvlink")
MODEL = next(c.model for c in load_configs(Path(__file__).parents[1] / "docs" / "validation_configs.json") if c.name == "mixtral-2L")
SHAPE = MODEL.shape_key()


def _flops(kind: str) -> float:
    return PROF.shapes[SHAPE][kind].points[2][0]


def test_factors_are_median_ratios_of_calibrated_kinds_only() -> None:
    assert SHAPE in PROF.shapes and "attn_fwd" not in INSITU_KINDS
    x = _flops("expert_fwd")
    bench = PROF.compute_us("expert_fwd", x, SHAPE)
    rows = [(SHAPE, "expert_fwd", x, r * bench) for r in (1.1, 1.2, 1.3, 5.0)]  # median 1.25
    rows += [(SHAPE, "attn_fwd", _flops("attn_fwd"), 1.0)] * 5                 # not calibrated
    rows += [(SHAPE, "expert_dx", _flops("expert_dx"), 1.0)] * (MIN_SAMPLES - 1)  # too few
    rows += [("no-such-shape", "expert_fwd", x, bench)] * 5                      # no cost of its own
    f = compute_factors(PROF, rows)
    assert f == {SHAPE: {"expert_fwd": {"factor": pytest.approx(1.25, rel=1e-3), "n": 4}}}


def test_with_host_scales_the_shape_and_the_fallback() -> None:
    x = _flops("attn_bwd")
    bench = PROF.compute_us("attn_bwd", x, SHAPE)
    rows = [(SHAPE, "attn_bwd", x, 1.2 * bench)] * 4
    cal = with_host(PROF, [], 0.0, None, rows)
    assert cal.compute_us("attn_bwd", x, SHAPE) == pytest.approx(1.2 * bench)
    assert cal.compute_us("attn_bwd", 3 * x, SHAPE) == pytest.approx(1.2 * PROF.compute_us("attn_bwd", 3 * x, SHAPE))
    # one shape's factor is its own: the fallback that prices unmeasured shapes keeps its cost
    assert cal.compute_us("attn_bwd", x) == pytest.approx(PROF.compute_us("attn_bwd", x))
    assert cal.compute_us("expert_fwd", x, SHAPE) == PROF.compute_us("expert_fwd", x, SHAPE)
    other = next(s for s in PROF.shapes if s != SHAPE and "attn_bwd" in PROF.shapes[s])
    assert cal.compute_us("attn_bwd", x, other) == PROF.compute_us("attn_bwd", x, other)
    assert cal.meta["insitu_min_shapes"] == 2
    # a second shape's factor: the fallback takes the median of the two
    xo = PROF.shapes[other]["attn_bwd"].points[0][0]
    rows2 = rows + [(other, "attn_bwd", xo, 1.4 * PROF.compute_us("attn_bwd", xo, other))] * 4
    two = with_host(PROF, [], 0.0, None, rows2)
    assert two.compute_us("attn_bwd", x) == pytest.approx(1.3 * PROF.compute_us("attn_bwd", x))
    assert without_compute_factors(two).compute_us("attn_bwd", x) == pytest.approx(PROF.compute_us("attn_bwd", x))
    back = without_compute_factors(cal)
    for kind in ("attn_bwd", "expert_fwd"):
        assert back.compute_us(kind, x, SHAPE) == pytest.approx(PROF.compute_us(kind, x, SHAPE))
        assert back.compute_us(kind, x) == pytest.approx(PROF.compute_us(kind, x))
    assert "insitu_compute" in cal.meta and "insitu_compute" not in back.meta and "insitu_min_shapes" not in back.meta
    g0 = build(MODEL, Cluster(1, 4), PROF, Knobs.uniform(MODEL.layers, 1))
    g1 = build(MODEL, Cluster(1, 4), cal, Knobs.uniform(MODEL.layers, 1))
    d = {t: (g0.nodes[t]["duration_us"], g1.nodes[t]["duration_us"]) for t in g0.nodes}
    assert all(b == pytest.approx(1.2 * a) for t, (a, b) in d.items() if g0.nodes[t]["kind"] == "attn_bwd")
    assert all(b == a for t, (a, b) in d.items() if g0.nodes[t]["kind"] != "attn_bwd")


def test_refit_keeps_the_compute_calibration() -> None:
    base = refit(PROF)
    x = _flops("expert_dw")
    rows = [(SHAPE, "expert_dw", x, 0.9 * base.compute_us("expert_dw", x, SHAPE))] * MIN_SAMPLES
    meta = dict(PROF.meta, samples=dict(PROF.meta["samples"], insitu_compute=[list(r) for r in rows]))
    cal = refit(dataclasses.replace(PROF, meta=meta))
    assert cal.compute_us("expert_dw", x, SHAPE) == pytest.approx(0.9 * base.compute_us("expert_dw", x, SHAPE))
    assert cal.meta["insitu_compute"] == {SHAPE: {"expert_dw": {"factor": pytest.approx(0.9), "n": MIN_SAMPLES}}}
    assert refit(cal).digest() == cal.digest()  # factors are taken against the benchmark, not compounded


def test_a_profile_calibrated_before_the_shape_rule_undoes_as_it_was_made() -> None:
    """A profile without ``meta.insitu_min_shapes`` scaled its fallback by one shape's factor:
    undoing it (validation's "as micro-benchmarked", and a refit before it refits) divides
    that back."""
    from moesched.costs.calibrate import apply_factors
    x = _flops("attn_bwd")
    factors = {SHAPE: {"attn_bwd": {"factor": 1.2, "n": 4}}}
    old = apply_factors(PROF, factors, min_shapes=1)
    old = dataclasses.replace(old, meta=dict(PROF.meta, insitu_compute=factors))
    assert old.compute_us("attn_bwd", x) == pytest.approx(1.2 * PROF.compute_us("attn_bwd", x))
    assert without_compute_factors(old).compute_us("attn_bwd", x) == pytest.approx(PROF.compute_us("attn_bwd", x))
