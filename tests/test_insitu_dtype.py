"""In-situ factors per dtype (moesched.costs.calibrate): a factor measured on bf16 shapes
scales the bf16 operator composition only (``ops.insitu``), never another dtype's; profiles
calibrated before the rule undo, refit and price as they were made."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from moesched.configs import load_configs
from moesched.costs.build import refit
from moesched.costs.calibrate import (MIN_SAMPLES, MIN_SHAPES, PER_DTYPE_KEY, apply_factors, calibrated_in_situ,
                                      with_host, without_compute_factors)
from moesched.models import MoEModel, dtype_of_shape
from moesched.plan import Plan
from moesched.profile import Profile

ROOT = Path(__file__).parents[1]
#: A one-H200 run's profile: operator tables for bf16 and fp32, calibrated on bf16 shapes
#: before the per-dtype rule (one shape sufficed for the fallback then).
RUN = ROOT / "results/h200x1/insitu-chunks/heldout-rep"
PROF = Profile.load(RUN / "h200x1-one-gpu.json")


def _heldout(name: str) -> MoEModel:
    return next(c.model for c in load_configs(ROOT / "benchmarks/heldout-shapes.json") if c.name == name)


def _flat(correction: dict[str, tuple[float, float]]) -> dict[str, float]:
    """{kind.alpha_us: µs, kind.scale: factor} of an ``ops.correction``, for approx."""
    return {f"{k}.{n}": v for k, pair in correction.items() for n, v in zip(("alpha_us", "scale"), pair)}


@pytest.fixture(scope="module")
def base() -> Profile:
    """PROF as micro-benchmarked (no in-situ compute factors)."""
    return without_compute_factors(PROF)


def _calibrated(base: Profile, kind: str, factor: float) -> Profile:
    """``base`` calibrated with ``factor`` on ``kind`` for MIN_SHAPES bf16 shapes."""
    shapes = [s for s, by in sorted(base.shapes.items()) if kind in by and dtype_of_shape(s) == "bf16"][:MIN_SHAPES]
    assert len(shapes) == MIN_SHAPES
    rows = []
    for s in shapes:
        x = base.shapes[s][kind].points[0][0]
        rows += [(s, kind, x, factor * base.compute_us(kind, x, s))] * MIN_SAMPLES
    return with_host(base, [], 0.0, None, rows)


def test_a_bf16_factor_prices_bf16_compositions_only(base: Profile) -> None:
    fp32 = _heldout("gpt-top1-fp32")
    bf16 = replace(fp32, dtype="bf16")
    assert fp32.shape_key() not in base.shapes and bf16.shape_key() not in base.shapes
    cal = _calibrated(base, "expert_fwd", 1.3)
    assert cal.meta[PER_DTYPE_KEY] is True and cal.ops.insitu == {"bf16": {"expert_fwd": pytest.approx(1.3)}}
    x = 1e12
    us = {m.dtype: tuple(p.compute_us("expert_fwd", x, m.shape_key(), m) for p in (base, cal)) for m in (fp32, bf16)}
    assert us["bf16"][1] == pytest.approx(1.3 * us["bf16"][0])
    assert us["fp32"][1] == pytest.approx(us["fp32"][0]) and us["fp32"][0] > us["bf16"][0]
    # the rule before: the one factor went to every dtype's composition
    old = apply_factors(base, cal.meta["insitu_compute"], min_shapes=MIN_SHAPES, per_dtype=False)
    assert old.compute_us("expert_fwd", x, fp32.shape_key(), fp32) == pytest.approx(1.3 * us["fp32"][0])
    # the FLOPs line (no model) is dtype-blind and keeps the median over all shapes
    assert cal.compute_us("expert_fwd", x) == pytest.approx(1.3 * base.compute_us("expert_fwd", x))


def test_expert_dx_copy_is_in_the_factor_of_its_own_dtype_only(base: Profile) -> None:
    fp32 = _heldout("gpt-top1-fp32")
    cal = _calibrated(base, "expert_dx", 1.1)
    assert calibrated_in_situ(cal, "expert_dx", replace(fp32, dtype="bf16").shape_key())
    assert not calibrated_in_situ(cal, "expert_dx", fp32.shape_key())
    assert calibrated_in_situ(PROF, "expert_dx", fp32.shape_key())  # calibrated before: pooled over dtypes


def test_undo_gives_the_tables_back(base: Profile) -> None:
    cal = _calibrated(base, "expert_fwd", 1.3)
    assert without_compute_factors(cal).ops.to_dict() == base.ops.to_dict()
    assert apply_factors(cal, cal.meta["insitu_compute"], undo=True).ops.to_dict() == base.ops.to_dict()
    assert PER_DTYPE_KEY not in without_compute_factors(cal).meta
    # a profile calibrated before undoes by its own rule: factors folded into the correction
    assert PROF.ops.insitu == {} and base.ops.correction != PROF.ops.correction
    again = apply_factors(base, PROF.meta["insitu_compute"]).ops
    assert again.insitu == {} and _flat(again.correction) == pytest.approx(_flat(PROF.ops.correction))


def test_refit_makes_a_per_dtype_profile_and_reproduces_it() -> None:
    new = refit(PROF)
    assert new.meta[PER_DTYPE_KEY] is True and set(new.ops.insitu) == {"bf16"}
    assert _flat(new.ops.correction) == pytest.approx(_flat(without_compute_factors(PROF).ops.correction))
    again = refit(new)
    assert again.to_dict() == new.to_dict() and again.digest() == new.digest()
    loaded = Profile.from_dict(json.loads(json.dumps(new.to_dict())))
    assert loaded.ops.insitu == new.ops.insitu and loaded.digest() == new.digest()


@pytest.mark.parametrize("folder, profile, regime", [
    (RUN, RUN / "h200x1-one-gpu.json", "one-gpu"),
    (ROOT / "results/h200x4/nvlink", "h200x4-nvlink", "nvlink"),   # the shipped profile
])
def test_profiles_calibrated_before_price_as_they_did(folder: Path, profile: Path | str, regime: str) -> None:
    """Plans replayed on profiles calibrated before the rule give the step times the code
    before it re-predicted (``now_ms`` of the committed repredicted CSV, 0.1 µs)."""
    prof = Profile.load(profile)
    assert PER_DTYPE_KEY not in prof.meta
    df = pd.read_csv(folder / f"repredicted-{regime}.csv")
    plans = json.loads((folder / f"plans-{regime}.json").read_text())
    rows = [i for i, c in enumerate(df["config"]) if c == "gpt-top1-fp32"][:3] + [0, len(df) - 1]
    for i in rows:
        assert Plan.from_dict(plans[i]).replay(prof).makespan_us / 1e3 == pytest.approx(df["now_ms"][i], abs=1e-4)


def test_check_report_lists_each_dtypes_pool_and_correction() -> None:
    """`moesched profile --check` on a profile with an fp32 shape profiled: the fp32 host
    pool (a ratio to the bf16 one) and fp32's own composition correction are listed."""
    from moesched.costs.check import report_lines
    prof = refit(Profile.load(ROOT / "results/h200x1/dtype-host2/heldout-rep/h200x1-one-gpu.json.gz"))
    lines = report_lines(prof)
    assert "  pooled over fp32 shapes:" in lines
    fp32 = next(ln for ln in lines if ln.startswith("    fp32 "))
    assert "attn_fwd" in fp32 and set(prof.ops.dtype_correction) == {"fp32"}
    bf, fp = prof.host.kinds["expert_fwd"], prof.host.dtypes["fp32"]["expert_fwd"]
    ratio = fp.alpha_us / bf.alpha_us
    assert ratio > 2 and fp.per_unit_us / bf.per_unit_us == pytest.approx(ratio, rel=1e-3)  # one ratio, 2-3x
    assert not any(ln.startswith("host calibration:") for ln in lines)  # consecutive steps: no passes kept
    passes = report_lines(Profile.load(ROOT / "results/h200x1/passes2/heldout-rep/h200x1-one-gpu.json.gz"))
    assert "host calibration: one plan's passes 6.96 % apart on average, 27.12 % at most; host probe 33.91 us" in passes


def test_pricing_note_names_what_a_model_borrows_from_another_dtype(capsys: pytest.CaptureFixture) -> None:
    """solve and simulate say how the profile prices the model and whether it borrows bf16's
    measurements for an fp32 model (no fp32 shape profiled)."""
    from moesched.cli import main
    from moesched.costs.check import pricing_note
    fp32 = _heldout("gpt-top1-fp32")
    with_fp32 = Profile.load(ROOT / "results/h200x1/dtype-host2/heldout-rep/h200x1-one-gpu.json.gz")
    bf16_only = Profile.load(ROOT / "results/h200x1/pinned/heldout-rep/h200x1-one-gpu.json.gz")
    assert pricing_note(with_fp32, fp32).endswith("compute by operators in fp32 tables; "
                                                  "host issue costs pooled over fp32 shapes")
    note = pricing_note(bf16_only, fp32)
    assert "corrected as bf16 tasks" in note and "pooled over bf16 shapes" in note and "no fp32 shape profiled" in note
    assert "no bf16 shape" not in pricing_note(bf16_only, replace(fp32, dtype="bf16"))
    profiled = next(c.model for c in load_configs(ROOT / "results/h200x1/configs-1gpu.json"))
    assert "the shape's own measured curves" in pricing_note(bf16_only, profiled)
    assert main(["simulate", "--model", "GPT2-Tiny-MoE", "--schedules", "vanilla"]) == 0
    out = capsys.readouterr().out
    assert "pricing GPT2-Tiny-MoE (fp32): compute by the per-kind FLOPs line of bf16 shapes" in out
