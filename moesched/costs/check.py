"""Checking the fits of a profile: every cost with its R^2 and the measured points its
fitted line misses by more than a tolerance (``moesched profile --check``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moesched.costs.fit import REL_TOL, line_value
from moesched.kinds import ALL_COMPUTE_KINDS
from moesched.models import MoEModel, dtype_of_shape
from moesched.ops import RECIPE
from moesched.profile import COLLECTIVES, SHAPE_A2A, Cost, Profile


@dataclass(frozen=True)
class CheckRow:
    """One fit of a profile: key ("compute.expert_fwd" or "comm.all_to_all.intra")."""

    key: str
    alpha_us: float
    beta_us_per_unit: float
    r2: float | None
    n_points: int
    model: str
    flagged: tuple[tuple[float, float, float, float], ...]  # (x, measured_us, fitted_us, err_pct)
    max_err_pct: float

    @property
    def ok(self) -> bool:
        return not self.flagged


def _costs(profile: Profile) -> list[tuple[str, Cost]]:
    out = [(f"compute.{k}", profile.compute[k]) for k in ALL_COMPUTE_KINDS if k in profile.compute]
    for shape, by in sorted(profile.shapes.items()):
        out += [(f"shapes.{shape}.{k}", by[k]) for k in ALL_COMPUTE_KINDS + SHAPE_A2A if k in by]
    for op in COLLECTIVES:
        for scope, cost in sorted(profile.comm.get(op, {}).items()):
            out.append((f"comm.{op}.{scope}", cost))
    for shape, by in sorted(profile.dep.shapes.items() if profile.dep is not None else []):
        out += [(f"dep.{shape}.{k}", c) for k, c in sorted(by.items())]
    return out


def check(profile: Profile, tol: float = REL_TOL) -> list[CheckRow]:
    """Every fit of ``profile``: alpha, beta, R^2, points, and the points whose fitted value
    (the line, or the regime's line of a piecewise fit from ``meta.fits``) is more than
    ``tol`` away from the measured one."""
    fits = profile.meta.get("fits", {}) if isinstance(profile.meta, dict) else {}
    rows = []
    for key, cost in _costs(profile):
        info = fits.get(key) if isinstance(fits, dict) else None
        flagged, worst = [], 0.0
        for x, t in cost.points:
            y = line_value(cost, info, x)
            err = abs(y - t) / t if t > 0 else 0.0
            worst = max(worst, err)
            if err > tol:
                flagged.append((x, t, y, round(100 * err, 2)))
        model = str(info.get("model", "line")) if isinstance(info, dict) else "line"
        rows.append(CheckRow(key, cost.alpha_us, cost.beta_us_per_unit, cost.r2, len(cost.points), model,
                             tuple(flagged), round(100 * worst, 2)))
    return rows



def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _host_lines(prof: Profile) -> list[str]:
    """The host issue costs of the report: the pooled costs, then each other dtype's pool."""
    h = prof.host
    assert h is not None
    lines = [f"host issue costs (moesched.host): lag {_fmt(h.lag_us)} us; per kind, pooled over shapes"
             + (" of the main dtype:" if h.dtypes else ":")]
    spread, probe = prof.meta.get("host_pass_spread_pct"), prof.meta.get("host_probe_us")
    if spread:  # how far one calibration plan's interleaved passes lay apart (the host's drift)
        lines.insert(0, f"host calibration: one plan's passes {_fmt(spread['mean'])} % apart on average, "
                        f"{_fmt(spread['max'])} % at most" + (f"; host probe {_fmt(probe)} us" if probe else ""))
    for dt, by in [("", h.kinds), *sorted(h.dtypes.items())]:
        if dt:
            lines.append(f"  pooled over {dt} shapes:")
        for k, c in by.items():
            lines.append(f"    {k:14} alpha {_fmt(c.alpha_us):>8} us  + {_fmt(c.per_unit_us):>10} us/unit"
                         f"  + {_fmt(c.per_chunk_us):>8} us/degree  R^2 {'-' if c.r2 is None else f'{c.r2:.3f}'}")
    return lines


def report_lines(prof: Profile, tol: float = REL_TOL) -> list[str]:
    """The report of ``moesched profile --check`` as lines: every fit (:func:`check`), the
    replay errors, overheads, host issue costs and in-situ corrections the profile keeps."""
    rows = check(prof, tol)
    lines = [f"profile {prof.name} ({prof.kind}): {prof.description}",
             f"hardware: {prof.hardware}",
             f"interference: compute_slowdown {_fmt(prof.compute_slowdown)}, comm_slowdown {_fmt(prof.comm_slowdown)}"
             + "".join(f"; {op}: compute_slowdown {_fmt(c)}, comm_slowdown {_fmt(m)}"
                       for op, (c, m) in sorted(prof.interference_by_op.items())),
             f"{'fit':34} {'model':9} {'alpha_us':>10} {'beta_us/unit':>12} {'R^2':>8} {'pts':>4} {'max_err%':>8}"]
    for r in rows:
        r2 = "-" if r.r2 is None else f"{r.r2:.5f}"
        lines.append(f"{r.key:34} {r.model:9} {_fmt(r.alpha_us):>10} {_fmt(r.beta_us_per_unit):>12} {r2:>8} "
                     f"{r.n_points:>4} {r.max_err_pct:>8.2f}")
        for x, t, y, e in r.flagged:
            lines.append(f"    off by {e:.1f} %: x={_fmt(x)} measured {_fmt(t)} us, fitted {_fmt(y)} us"
                         f" (the profile interpolates the measured point)")
    flagged = sum(len(r.flagged) for r in rows)
    lines.append(f"{len(rows)} fits, {flagged} point(s) more than {100 * tol:g} % off their line")
    lines += _meta_lines(prof.meta)
    if prof.host is not None:
        lines += _host_lines(prof)
    lines += _correction_lines(prof)
    for k in ("command", "date", "duration_s"):
        if k in prof.meta:
            lines.append(f"{k}: {prof.meta[k]}")
    return lines


def _meta_lines(meta: dict[str, Any]) -> list[str]:
    """The report's lines on the profiler's replay, per-task overheads and uneven all-to-alls."""
    lines: list[str] = []
    rep = meta.get("replay")
    if isinstance(rep, dict):
        lines.append(f"replay on {rep.get('n')} held-out points: mean error {rep.get('mean_err_pct')} %, "
                     f"max {rep.get('max_err_pct')} % ({rep.get('worst')}); compute mean "
                     f"{rep.get('compute_mean_err_pct')} %, comm mean {rep.get('comm_mean_err_pct')} %")
        if rep.get("comm_spread_mean_pct") is not None:
            lines.append(f"repeatability of the collectives (range of the passes' medians / median): mean "
                         f"{rep.get('comm_spread_mean_pct')} % over all points, "
                         f"{rep.get('comm_replay_spread_mean_pct')} % over the held-out ones")
    else:
        lines.append("replay: none recorded")
    if isinstance(meta.get("overhead_us"), dict):
        lines.append("per-task overhead (us): " + ", ".join(f"{k} {_fmt(v)}" for k, v in meta["overhead_us"].items()))
    if isinstance(meta.get("all_to_all_uneven"), dict):
        lines.append("uneven all-to-all / even: " + ", ".join(
            f"{s} mean {v.get('mean_ratio_to_even')} max {v.get('max_ratio_to_even')}"
            for s, v in meta["all_to_all_uneven"].items()))
    return lines


def _correction_lines(prof: Profile) -> list[str]:
    """The report's lines on the operator-composition correction and the in-situ costs."""
    lines: list[str] = []
    if prof.ops is not None and prof.ops.correction:
        stale = "" if prof.ops.recipe == RECIPE else f"; refit with --refit --models for recipe {RECIPE}"
        lines.append(f"operator composition correction (moesched.optables; fitted against operator recipe "
                     f"{prof.ops.recipe}{stale}), alpha us + scale x sum of operators:")
        for dt, corr in [("", prof.ops.correction), *sorted(prof.ops.dtype_correction.items())]:
            lines.append(f"    {dt or 'common':7}" + "  ".join(f"{k} {_fmt(a)} + {_fmt(sc)}x" for k, (a, sc) in corr.items()))
    insitu = [(sh, k, c) for sh, by in sorted(prof.shapes.items()) for k, c in by.items() if k.startswith("all_to_all@")]
    if insitu:
        lines.append("all-to-alls timed in executor steps (used for their shape) vs the micro-benchmark:")
        for sh, k, c in insitu:
            scope = k.split("@", 1)[1]
            pts = "  ".join(f"{x / 2**20:.2f} MB {_fmt(t)} us ({t / prof.comm_us('all_to_all', scope, x):.2f}x)"
                            for x, t in c.points) if scope in prof.comm["all_to_all"] else "-"
            lines.append(f"    {sh} {scope}: {pts}")
    factors = prof.meta.get("insitu_compute")
    if isinstance(factors, dict) and factors:
        lines.append("compute in executor steps / micro-benchmark (applied to the costs, moesched.costs.calibrate):")
        for sh, by in sorted(factors.items()):
            lines.append(f"    {sh}: " + "  ".join(f"{k} {f['factor']:.3f} (n={f['n']})" for k, f in by.items()))
    return lines


def pricing_note(prof: Profile, model: MoEModel) -> str:
    """One line saying how ``prof`` prices ``model``'s compute and host issue (the precedence
    of :meth:`moesched.profile.Profile.compute_us` and :meth:`moesched.host.HostCosts.us`),
    and whether it borrows another dtype's measurements: the cue to profile a shape in the
    model's dtype (docs/profiling.md)."""
    shape, dt, main = model.shape_key(), model.dtype, _main_dtype(prof)
    foreign = main is not None and main != dt  # measured shapes exist, none or few in dt
    ops = prof.ops
    run = ops.run_dtype(dt) if ops is not None else None
    borrows = []
    if shape in prof.shapes:
        compute = "the shape's own measured curves"
    elif ops is not None and run is not None:
        compute = f"operators in {run} tables"
        if foreign and ops.runs_as is None and ops.correction and run not in ops.dtype_correction:
            compute += f", corrected as {main} tasks"
            borrows.append("compute")
    else:
        compute = "the per-kind FLOPs line" + (f" of {main} shapes" if foreign else "")
        borrows += ["compute"] if foreign else []
    host = "none"
    if prof.host is not None:
        if shape in prof.host.shapes:
            host = "the shape's own"
        elif dt in prof.host.dtypes or not foreign:
            host = f"pooled over {dt} shapes"
        else:
            host = f"pooled over {main} shapes"
            borrows.append("host")
    note = f"pricing {model.name} ({dt}): compute by {compute}; host issue costs {host}"
    return note + (f" (no {dt} shape profiled; profile one: docs/profiling.md)" if borrows else "")


def _main_dtype(prof: Profile) -> str | None:
    """The dtype most of the profile's measured shapes ran in (None without any)."""
    dts = [dtype_of_shape(s) for s in prof.shapes]
    return max(sorted(set(dts)), key=dts.count) if dts else None
