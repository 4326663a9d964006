"""Property-based tests of the CLI contract: for any command line, profile or plan, moesched
either succeeds (writing only the outputs asked for) or exits 2 with exactly one stderr line
``moesched: error: ...`` and leaves the file system as it was; never a traceback.

Runs in-process (``moesched.cli.main``) and deterministically (``derandomize=True``), so CI
sees the same examples every time.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moesched.cli import main
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.models import MoEModel
from moesched.plan import Plan, from_timeline
from moesched.profile import PROFILES_DIR, Profile
from moesched.schedules import get
from moesched.schedules.base import evaluate

#: MOESCHED_FUZZ_EXPLORE=N runs N times more examples from a random seed (for looking for
#: new failures locally); unset, CI runs the same fixed examples every time.
EXPLORE = int(os.environ.get("MOESCHED_FUZZ_EXPLORE", "0"))
FUZZ = settings(deadline=None, derandomize=not EXPLORE, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples * max(1, EXPLORE))
MODEL = "GPT2-Tiny-MoE"


# ---- the contract ----------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: file contents, or the kind of a non-file."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link->" + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel] = "dir" if p.is_dir() else "special"
    return out


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


def assert_contract(argv: list[str], folder: Path, outputs: set[str]) -> int:
    """Run ``argv`` with ``folder`` as the working directory and check the contract; the
    exit status. ``outputs``: names (relative to folder) the command may create or change."""
    before = snapshot(folder)
    rc, _, err = run_main(argv)
    after = snapshot(folder)
    assert "Traceback" not in err, err
    if rc == 0:
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        assert changed <= outputs, (argv, changed)
        assert not [k for k in after if k.endswith(".tmp")], after.keys()
    else:
        lines = err.strip("\r\n").split("\n")
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("moesched: error:"), (argv, rc, err)
        assert after == before, (argv, set(after) ^ set(before))
    return rc


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A fresh temporary working directory holding an input profile and a few traps."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "prof.json").write_bytes((PROFILES_DIR / "analytic-h200x4-nvlink.json").read_bytes())
        (folder / "sub").mkdir()
        os.mkfifo(folder / "fifo")  # an output only: reading it is tested in test_outputs, unblocked
        (folder / "old.json").write_text("keep me\n")
        os.chdir(folder)
        try:
            yield folder
        finally:
            os.chdir(old)


# ---- (a) command-line flags --------------------------------------------------------------
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
MODELS = st.sampled_from([MODEL, MODEL.lower(), "gpt2-tiny", "", "Mixtral", "x" * 300]) | TEXT
CLUSTERS = st.sampled_from(["1x4", "1x4/ep2", "1x4/ep4", "2x2", "1x2", "0x4", "1x0", "1x4/ep3", "1x4/ep0", "4",
                            "x", "", "99999999999x99999999999", "1x4/ep99999999999999999999", "-1x4"]) | TEXT
LAYERS = st.sampled_from(["1", "2", "0", "-1", "abc", "", "1e3", "99999999", "2.5"]) | st.integers(-3, 3).map(str)
LIMITS = st.sampled_from(["5", "0.5", "0", "-1", "nan", "inf", "-inf", "abc", "", "1e-300", "1e300"])
SCHEDULES = st.sampled_from(["all", "vanilla", "vanilla,tutel", ",", "", " ", "vanilla,,lina", "nope", "ALL",
                             "vanilla,vanilla", "tutel , fsmoe"]) | TEXT
PROFILES = st.sampled_from(["prof.json", "analytic-h200x4-nvlink", "analytic-h200x4-nvlink.json",
                            "analytic-h200x4-2nodes", "cpu-gloo-2", "missing.json", "", ".", "sub",
                            "/dev/null", "old.json", "out.json"])
# (no /dev/null: a regression run as root would replace the device; the fifo stands for it)
OUTS = st.sampled_from(["out.json", "out2.json", "sub/out.json", "new/out.json", "", ".", "sub", "fifo", "prof.json", "old.json", "/proc/out.json", "out.png", "sub/../out.json"])


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[list[str], set[str]]:
    """A command line (some flags good, some bad) and the outputs it may write."""
    cmd = draw(st.sampled_from(["simulate", "solve", "solve", "sweep", "plot-compare", "plot-timeline"]))
    argv: list[str] = []
    outs: set[str] = set()

    def opt(flag: str, values: st.SearchStrategy[str], p: float = 0.5) -> None:
        if draw(st.floats(0, 1)) < p:
            argv.append(f"{flag}={draw(values)}")

    def out(flag: str, required: bool) -> None:
        if required or draw(st.booleans()):
            path = draw(OUTS)
            argv.append(f"{flag}={path}")
            outs.add(os.path.normpath(path) if path else path)

    if cmd == "simulate":
        argv = ["simulate", f"--model={draw(MODELS)}"]
        opt("--schedules", SCHEDULES, 0.9)
        opt("--cluster", CLUSTERS, 0.3)
        out("--trace", False)
    elif cmd == "solve":
        argv = ["solve", f"--model={draw(MODELS)}", "--layers=" + draw(LAYERS)]
        opt("--time-limit", LIMITS, 0.3)
        opt("--cluster", CLUSTERS, 0.3)
        out("--out", True)
        out("--trace", False)
    elif cmd == "sweep":
        argv = ["sweep", "--grid=schemoe675", "--limit=" + draw(st.sampled_from(["1", "2", "0", "-2", "x"])),
                "--workers=" + draw(st.sampled_from(["1", "0", "-1", "1000", "x"]))]
        out("--out", False)
    elif cmd == "plot-compare":
        argv = ["plot", "compare", f"--model={draw(MODELS)}", "--layers=" + draw(LAYERS)]
        out("--out", True)
    else:
        argv = ["plot", "timeline", "--trace=" + draw(st.sampled_from(["old.json", "prof.json", "sub", ""])),
                f"--out={draw(OUTS)}"]
    if cmd != "plot-timeline":
        opt("--profile", PROFILES, 0.8)
    return argv, {o for o in outs if o}


@fuzz(100)
@given(command_lines())
def test_fuzz_command_lines(case: tuple[list[str], set[str]]) -> None:
    argv, outs = case
    with workdir() as folder:
        assert_contract(argv, folder, outs)


# ---- (b) mutated profiles ------------------------------------------------------------------
def _leaves(x: Any, path: tuple = ()) -> Iterator[tuple]:
    """Key paths of every value in ``x`` (containers too, so whole sections get replaced)."""
    if path:
        yield path
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(x, list) and len(x) <= 64:
        for i, v in enumerate(x):
            yield from _leaves(v, path + (i,))


def _base_profiles() -> dict[str, dict]:
    analytic = json.loads((PROFILES_DIR / "analytic-h200x4-nvlink.json").read_text())
    cpu = json.loads((PROFILES_DIR / "cpu-gloo-2.json").read_text())
    measured = json.loads((PROFILES_DIR / "h200x4-nvlink.json").read_text())
    cpu_host = copy.deepcopy(cpu)
    cpu_host["host"] = {**measured["host"], "shapes": {}}
    return {"analytic": analytic, "cpu": cpu, "cpu+host": cpu_host}


BASES = _base_profiles()
BAD_VALUES = st.sampled_from([math.nan, math.inf, -math.inf, -1, -1e-9, 0, 0.0, 1e300, 10**30, 10**400,
                              "x", "", [], [[1, 2]], {}, {"a": 1}, None, True, False, 2.5, 1])


def _mutate(d: Any, path: tuple, value: Any, delete: bool) -> None:
    for k in path[:-1]:
        d = d[k]
    if delete and isinstance(d, dict):
        del d[path[-1]]
    else:
        d[path[-1]] = value


@st.composite
def mutated_profiles(draw: st.DrawFn) -> tuple[str, dict]:
    name = draw(st.sampled_from(sorted(BASES)))
    d = copy.deepcopy(BASES[name])
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_leaves(d))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        _mutate(d, path, copy.deepcopy(draw(BAD_VALUES)), delete=draw(st.integers(0, 4)) == 0)
    return name, d


@fuzz(70)
@given(mutated_profiles())
def test_fuzz_mutated_profiles(case: tuple[str, dict]) -> None:
    """simulate, solve and profile --check on a mutated profile: success or one clean line. The file is written
    with json.dumps' defaults, so NaN and Infinity appear as a careless tool writes them."""
    _, d = case
    with workdir() as folder:
        Path("mut.json").write_text(json.dumps(d))
        assert_contract(["simulate", f"--model={MODEL}", "--profile=mut.json", "--schedules=vanilla,fsmoe"],
                        folder, set())
        assert_contract(["solve", f"--model={MODEL}", "--layers=1", "--profile=mut.json", "--out=p.json",
                         "--time-limit=5"], folder, {"p.json"})
        assert_contract(["profile", "--check=mut.json"], folder, set())


# ---- (b) mutated plans ------------------------------------------------------------------------
def _plan() -> dict:
    model, cluster = MoEModel.from_name(MODEL, layers=2), Cluster(1, 4)
    profile = Profile.load(PROFILES_DIR / "analytic-h200x4-nvlink.json")
    sched = get("fsmoe").schedule(model, cluster, profile)
    ev = evaluate(model, cluster, profile, sched)
    return from_timeline("fsmoe", model, cluster, sched.knobs, ev.timeline, profile).to_dict()


PLAN = _plan()


@st.composite
def mutated_plans(draw: st.DrawFn) -> dict:
    d = copy.deepcopy(PLAN)
    paths = [p for p in _leaves(d) if p[0] != "hash" and not (p[0] == "order" and len(p) > 1 and isinstance(p[1], int) and p[1] > 4)]
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(paths))
        try:
            value = copy.deepcopy(draw(BAD_VALUES | st.integers(-2, 20) | st.sampled_from(["flat", "overlap", 2**40])))
            _mutate(d, path, value, delete=draw(st.integers(0, 5)) == 0)
        except (KeyError, IndexError, TypeError):  # an earlier mutation removed the parent
            pass
        paths = [p for p in _leaves(d) if p[0] != "hash" and not (p[0] == "order" and len(p) > 1 and isinstance(p[1], int) and p[1] > 4)]
    if draw(st.booleans()):  # a matching hash, so validation rather than the hash must refuse it
        body = {k: v for k, v in d.items() if k != "hash"}
        d["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return d


@fuzz(120)
@given(mutated_plans())
def test_fuzz_mutated_plans(d: dict) -> None:
    """Plan.load (which every executor rank runs) accepts a plan or raises one MoeschedError
    line, quickly, whatever the file holds."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plan.json"
        path.write_text(json.dumps(d))
        t0 = time.perf_counter()
        try:
            Plan.load(path)
        except MoeschedError as e:
            assert "\n" not in str(e) and str(e).startswith(f"plan {path}")
        assert time.perf_counter() - t0 < 5.0


def test_unmutated_inputs_pass() -> None:
    """The bases themselves are accepted (the fuzz starts from valid files)."""
    for d in BASES.values():
        Profile.from_dict(copy.deepcopy(d))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plan.json"
        path.write_text(json.dumps(PLAN))
        Plan.load(path)


@pytest.mark.parametrize("argv", [["simulate", f"--model={MODEL}", "--schedules=,"],
                                  ["solve", f"--model={MODEL}", "--out=", "--layers=1"]])
def test_contract_helper_catches_known_cases(argv: list[str]) -> None:
    with workdir() as folder:
        assert assert_contract(argv, folder, {"out.json"}) == 2
