"""Profile format: costs, round trips, and every malformed file rejected in one line."""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest

from moesched.errors import MoeschedError
from moesched.profile import ALL_COMPUTE_KINDS, COMPUTE_KINDS, PROFILES_DIR, Cost, Profile, default_profile_path

NVLINK_PATH = PROFILES_DIR / "analytic-h200x4-nvlink.json"


def good() -> dict:
    return json.loads(NVLINK_PATH.read_text())


def write(tmp_path: Path, obj: object, name: str = "p.json") -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def test_shipped_profiles_load() -> None:
    for path in PROFILES_DIR.glob("*.json"):
        p = Profile.load(path)
        assert p.kind in ("analytic", "measured")
        assert set(COMPUTE_KINDS) <= set(p.compute) <= set(ALL_COMPUTE_KINDS)
        assert p.compute_slowdown >= 1.0 and p.comm_slowdown >= 1.0
    assert Profile.load("analytic-h200x4-nvlink") == Profile.load(NVLINK_PATH)  # by name
    assert default_profile_path().exists()


def test_round_trip_and_digest(tmp_path: Path) -> None:
    p = Profile.load(NVLINK_PATH)
    p.save(tmp_path / "copy.json")
    q = Profile.load(tmp_path / "copy.json")
    assert q == p and q.digest() == p.digest() and len(p.digest()) == 16
    d = p.to_dict()
    d["compute"]["attn_fwd"]["alpha_us"] += 1.0
    assert Profile.from_dict(d).digest() != p.digest()
    r = replace(p, interference_by_op={"all_reduce": (1.2, 1.7)})  # per-collective factors survive the file
    r.save(tmp_path / "by_op.json")
    assert Profile.load(tmp_path / "by_op.json").interference_by_op == {"all_reduce": (1.2, 1.7)}


def test_cost_line_and_points() -> None:
    c = Cost(10.0, 2.0)
    assert c(0) == 0.0 and c(-5) == 0.0 and c(5) == 20.0
    t = Cost(1.0, 1.0, ((100.0, 50.0), (0.5, 3.0), (10.0, 10.0)))
    assert t.points[0] == (0.5, 3.0)  # sorted
    assert t(10.0) == 10.0 and t(100.0) == 50.0
    assert t(55.0) == pytest.approx(30.0)  # halfway between 10 and 100
    assert t(1000.0) == 1001.0 and t(0.1) == pytest.approx(1.1)  # the line outside the points
    assert Cost.from_dict(t.to_dict(), "x") == t


def test_profile_costs_monotone() -> None:
    p = Profile.load(NVLINK_PATH)
    xs = [2.0**i for i in range(10, 36)]
    for kind in COMPUTE_KINDS:
        ys = [p.compute_us(kind, x) for x in xs]
        assert ys == sorted(ys)
    ys = [p.comm_us("all_to_all", "intra", x) for x in xs]
    assert ys == sorted(ys) and ys[0] > 0
    with pytest.raises(MoeschedError, match="scope 'inter'"):
        p.comm_us("all_to_all", "inter", 1e6)


def test_optional_loss_kind(tmp_path: Path) -> None:
    """A profile may cost the loss task (x = elements); without it the loss costs 0 µs; other
    extra kinds, or a missing required kind, are rejected."""
    d = good()
    assert Profile.from_dict(d).compute_us("loss", 1e6) == 0.0
    d["compute"]["loss"] = {"alpha_us": 20.0, "beta_us_per_unit": 1e-4}
    assert Profile.from_dict(d).compute_us("loss", 1e6) == pytest.approx(120.0)
    bad = copy.deepcopy(d)
    bad["compute"]["lm_head"] = bad["compute"]["loss"]
    with pytest.raises(MoeschedError, match="compute must have the kinds"):
        Profile.from_dict(bad)
    del d["compute"]["attn_bwd"]
    with pytest.raises(MoeschedError, match="compute must have the kinds"):
        Profile.from_dict(d)


def test_malformed_json(tmp_path: Path) -> None:
    with pytest.raises(MoeschedError, match="not valid JSON"):
        Profile.load(write(tmp_path, '{"format": "moesched.profile", '))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(MoeschedError, match="not found"):
        Profile.load(tmp_path / "nope.json")
    with pytest.raises(MoeschedError, match="not found"):
        Profile.load("no-such-shipped-profile")
    with pytest.raises(MoeschedError, match="directory"):
        Profile.load(tmp_path)


def test_wrong_version(tmp_path: Path) -> None:
    d = good()
    d["version"] = 2
    with pytest.raises(MoeschedError, match="version 2 is not supported"):
        Profile.load(write(tmp_path, d))


def test_wrong_format(tmp_path: Path) -> None:
    d = good()
    d["format"] = "moesched.plan"
    with pytest.raises(MoeschedError, match="not a moesched profile"):
        Profile.load(write(tmp_path, d))
    with pytest.raises(MoeschedError, match="JSON object"):
        Profile.load(write(tmp_path, [1, 2]))


def _mutations() -> list[tuple[str, object]]:
    def drop(*path: str):
        def f(d: dict) -> None:
            for k in path[:-1]:
                d = d[k]
            del d[path[-1]]
        return f

    def setv(value: object, *path: str):
        def f(d: dict) -> None:
            for k in path[:-1]:
                d = d[k]
            d[path[-1]] = value
        return f

    return [
        ("profile keys differ", drop("meta")),
        ("profile keys differ", setv(1, "extra")),
        ("kind must be", setv("guessed", "kind")),
        ("hardware must have", drop("hardware", "regime")),
        ("positive integers", setv(0, "hardware", "nodes")),
        ("positive integers", setv(2.5, "hardware", "gpus_per_node")),
        ("compute must have", drop("compute", "expert_dw")),
        ("compute must have", setv({"alpha_us": 1, "beta_us_per_unit": 1}, "compute", "gelu")),
        ("compute.attn_fwd must have", drop("compute", "attn_fwd", "alpha_us")),
        ("compute.attn_fwd must have", setv(3, "compute", "attn_fwd", "gamma")),
        ("non-numeric", setv("fast", "compute", "attn_fwd", "alpha_us")),
        ("negative cost", setv(-1.0, "compute", "attn_fwd", "beta_us_per_unit")),
        ("comm must hold", drop("comm", "all_reduce")),
        ("comm must hold", setv({"intra": {"alpha_us": 1, "beta_us_per_unit": 1}}, "comm", "broadcast")),
        ("comm.all_to_all must map", setv({}, "comm", "all_to_all")),
        ("comm.all_to_all must map", setv({"galaxy": {"alpha_us": 1, "beta_us_per_unit": 1}}, "comm", "all_to_all")),
        ("interference must have", drop("interference", "comm_slowdown")),
        (">= 1.0", setv(0.5, "interference", "compute_slowdown")),
        (">= 1.0", setv("high", "interference", "comm_slowdown")),
        ("by_op must map", setv({"broadcast": {"compute_slowdown": 1.0, "comm_slowdown": 1.0}},
                                "interference", "by_op")),
        ("by_op.all_reduce must have", setv({"all_reduce": {"compute_slowdown": 1.0}}, "interference", "by_op")),
        (">= 1.0", setv({"all_reduce": {"compute_slowdown": 1.0, "comm_slowdown": 0.9}}, "interference", "by_op")),
        ("interference must have", setv(2, "interference", "extra")),
    ]


@pytest.mark.parametrize("match,mutate", _mutations())
def test_wrong_keys_and_values(tmp_path: Path, match: str, mutate) -> None:
    d = copy.deepcopy(good())
    mutate(d)
    with pytest.raises(MoeschedError, match=match) as e:
        Profile.load(write(tmp_path, d))
    assert "\n" not in str(e.value)


def _zero_costs(d: dict) -> None:
    for c in list(d["compute"].values()) + [c for by in d["comm"].values() for c in by.values()]:
        c.update(alpha_us=0.0, beta_us_per_unit=0.0)
        c.pop("points", None)


@pytest.mark.parametrize("text,match", [
    ('"alpha_us": NaN', r"compute\.expert_fwd\.alpha_us is NaN"),
    ('"alpha_us": Infinity', r"compute\.expert_fwd\.alpha_us is infinite"),
    ('"alpha_us": -Infinity', r"compute\.expert_fwd\.alpha_us is infinite"),
    ('"alpha_us": 1e999', r"compute\.expert_fwd\.alpha_us is infinite"),
    ('"alpha_us": 1e300', r"compute\.expert_fwd\.alpha_us is 1e\+300, outside"),
    ('"alpha_us": true', r"compute\.expert_fwd\.alpha_us has a non-numeric value True"),
    ('"alpha_us": [1]', r"compute\.expert_fwd\.alpha_us has a non-numeric value"),
])
def test_nonfinite_and_nonnumeric_costs_named(tmp_path: Path, text: str, match: str) -> None:
    d = good()
    d["compute"]["expert_fwd"]["alpha_us"] = 12345.5
    raw = json.dumps(d).replace('"alpha_us": 12345.5', text)
    path = write(tmp_path, raw, "x.json")
    with pytest.raises(MoeschedError, match=f"^profile {path}: {match}") as e:
        Profile.load(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("match,mutate", [
    ("is zero for every size", _zero_costs),
    ("is zero for every size", lambda d: d["comm"]["all_reduce"]["intra"].update(
        alpha_us=0.0, beta_us_per_unit=0.0, points=[[1.0, 0.0], [2.0, 0.0]])),
    (r"interference\.compute_slowdown is infinite", lambda d: d["interference"].update(compute_slowdown=float("inf"))),
    ("slowdowns must be numbers >= 1.0 and <= 1000", lambda d: d["interference"].update(comm_slowdown=1e9)),
    ("slowdowns must be", lambda d: d["interference"].update(comm_slowdown=True)),
    ("meta must be a JSON object", lambda d: d.update(meta=5)),
    ("meta must be a JSON object", lambda d: d.update(meta=None)),
    ("name must be a string", lambda d: d.update(name=5)),
    ("description must be a string", lambda d: d.update(description=["a"])),
    ("gpu and regime must be strings", lambda d: d["hardware"].update(gpu=None)),
    ("positive integers", lambda d: d["hardware"].update(nodes=True)),
    ("at most 65536 ranks", lambda d: d["hardware"].update(nodes=10**30)),
    (r"gpu_memory_bytes is beyond .* \(1 PiB\)", lambda d: d["hardware"].update(gpu_memory_bytes=10**400)),
    (r"points must be a list of \[x, us\] pairs", lambda d: d["compute"]["attn_fwd"].update(points=[[1.0]])),
    (r"points must be a list of \[x, us\] pairs", lambda d: d["compute"]["attn_fwd"].update(points="many")),
    (r"points\[0\]\[1\] has a non-numeric value", lambda d: d["compute"]["attn_fwd"].update(points=[[1, "x"]])),
    ("version", lambda d: d.update(version=True)),
])
def test_bad_values_rejected_in_one_line(tmp_path: Path, match: str, mutate) -> None:
    d = good()
    mutate(d)
    path = write(tmp_path, json.dumps(d), "x.json")
    with pytest.raises(MoeschedError, match=match) as e:
        Profile.load(path)
    assert str(e.value).startswith(f"profile {path}:") and "\n" not in str(e.value)


def test_deeply_nested_and_huge_files(tmp_path: Path) -> None:
    with pytest.raises(MoeschedError, match="nested too deeply"):
        Profile.load(write(tmp_path, "[" * 100_000 + "]" * 100_000))
    with pytest.raises(MoeschedError, match="not valid JSON"):
        Profile.load(write(tmp_path, "1" * 5000))  # more digits than Python converts
    with pytest.raises(MoeschedError, match="not a moesched profile"):
        Profile.load(write(tmp_path, '{"a":' * 900 + "1" + "}" * 900))


def test_cli_rejects_bad_profiles_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from moesched.cli import main
    cases = {"nan": lambda d: d["compute"]["attn_fwd"].update(alpha_us=float("nan")),
             "zero": _zero_costs, "inf": lambda d: d["interference"].update(comm_slowdown=float("inf")),
             "meta": lambda d: d.update(meta=5)}
    for name, mutate in cases.items():
        d = good()
        mutate(d)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(d))  # json.dumps writes NaN/Infinity like a careless tool would
        for argv in (["simulate", "--model", "GPT2-Tiny-MoE", "--profile", str(path)],
                     ["solve", "--model", "GPT2-Tiny-MoE", "--profile", str(path), "--out", str(tmp_path / "p.json")],
                     ["profile", "--check", str(path)]):
            assert main(argv) == 2
            cap = capsys.readouterr()
            assert cap.out == "" and len(cap.err.strip().splitlines()) == 1, (name, argv, cap.err)
            assert cap.err.startswith(f"moesched: error: profile {path}:"), cap.err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.json" for n in cases)


def test_save_refuses_nonfinite(tmp_path: Path) -> None:
    p = Profile.load(NVLINK_PATH)
    bad = replace(p, compute={**p.compute, "attn_fwd": Cost(float("nan"), 1.0)})
    with pytest.raises(MoeschedError, match=r"compute\.attn_fwd\.alpha_us is NaN"):
        bad.save(tmp_path / "bad.json")
    assert list(tmp_path.iterdir()) == []


def test_shipped_names_resolve_with_or_without_json_from_anywhere(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from moesched.profile import resolve_profile_path
    monkeypatch.chdir(tmp_path)
    for name in ("h200x4-nvlink", "h200x4-nvlink.json", default_profile_path().name):
        assert resolve_profile_path(name) == PROFILES_DIR / "h200x4-nvlink.json"
        assert Profile.load(name).name == "h200x4-nvlink"
    (tmp_path / "h200x4-nvlink.json").write_text(json.dumps({**good(), "name": "local"}))
    assert Profile.load("h200x4-nvlink.json").name == "local"  # an existing file wins over the shipped one
    with pytest.raises(MoeschedError, match="not found: no-such-profile.json"):
        Profile.load("no-such-profile.json")
    with pytest.raises(MoeschedError, match="empty"):
        Profile.load("")


def test_gzip_profile_round_trips_and_stands_in_for_its_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A profile saved as ``NAME.json.gz`` is gzip (as the measured runs under results/ are
    kept), loads equal to the plain one, and ``NAME.json`` loads it when only the ``.gz``
    exists; ``--refit`` keeps it compressed in place; a broken ``.gz`` is one line."""
    import gzip

    from moesched.cli import main
    p = Profile.load("h200x4-nvlink")  # measured: it keeps the raw samples --refit needs
    p.save(tmp_path / "a.json.gz")
    raw = (tmp_path / "a.json.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b" and json.loads(gzip.decompress(raw)) == p.to_dict()
    assert Profile.load(tmp_path / "a.json.gz") == p == Profile.load(tmp_path / "a.json")
    assert main(["profile", "--refit", str(tmp_path / "a.json")]) == 0
    assert (tmp_path / "a.json.gz").read_bytes()[:2] == b"\x1f\x8b" and not (tmp_path / "a.json").exists()
    assert Profile.load(tmp_path / "a.json").name == p.name
    for bad in (b"not gzip", raw[: len(raw) // 2]):
        (tmp_path / "b.json.gz").write_bytes(bad)
        with pytest.raises(MoeschedError, match=r"b\.json\.gz is not valid gzip"):
            Profile.load(tmp_path / "b.json")
    assert main(["simulate", "--profile", str(tmp_path / "b.json.gz"), "--model", "GPT2-Tiny-MoE"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moesched: error: ") and err.count("\n") == 1 and "not valid gzip" in err


def test_a_commands_profile_is_kept_out_of_full_collections() -> None:
    """The profile a command loads lives for the whole command: its objects leave the
    collector's generations, so a full collection during a search does not rescan them."""
    import argparse
    import gc

    from moesched.commands.setup import load_profile
    gc.unfreeze()
    try:
        profile = load_profile(argparse.Namespace(profile="h200x4-nvlink"))
        frozen = gc.get_freeze_count()
        assert profile.name == "h200x4-nvlink" and frozen > 50_000, frozen
        assert not any(gc.is_tracked(o) and o is profile for o in gc.get_objects())
    finally:
        gc.unfreeze()
