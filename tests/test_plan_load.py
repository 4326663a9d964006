"""Plans are checked by type and range before anything is built (Plan.load runs on every
executor rank): one MoeschedError line for every malformed field, quickly."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.plan import MAX_PLAN_GRAD_CHUNKS, Plan, from_timeline
from moesched.profile import PROFILES_DIR, Profile
from moesched.schedules import get
from moesched.schedules.base import evaluate


@pytest.fixture(scope="module")
def plan_dict() -> dict[str, Any]:
    model, cluster = MoEModel.from_name("GPT2-Tiny-MoE"), Cluster(1, 4)
    profile = Profile.load(PROFILES_DIR / "analytic-h200x4-nvlink.json")
    sched = get("tutel").schedule(model, cluster, profile)
    ev = evaluate(model, cluster, profile, sched)
    return from_timeline("tutel", model, cluster, sched.knobs, ev.timeline, profile).to_dict()


def rehash(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with a hash that matches its body, so validation (not the hash) must catch it."""
    body = {k: v for k, v in d.items() if k != "hash"}
    return {**body, "hash": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}


def knob(key: str, value: Any) -> Callable[[dict], None]:
    return lambda d: d["knobs"].__setitem__(key, value)


CASES = [
    ("grad_chunk_bytes must be a positive integer or null", knob("grad_chunk_bytes", 0.5)),
    ("grad_chunk_bytes must be a positive integer or null", knob("grad_chunk_bytes", True)),
    ("grad_chunk_bytes must be a positive integer or null", knob("grad_chunk_bytes", "1024")),
    ("grad_chunk_bytes must be positive", knob("grad_chunk_bytes", 0)),
    (f"at most {MAX_PLAN_GRAD_CHUNKS} are allowed", knob("grad_chunk_bytes", 1)),
    ("at_chunked must be true or false", knob("at_chunked", "no")),
    ("at_chunked must be true or false", knob("at_chunked", 0)),
    ("serialize must be true or false", knob("serialize", None)),
    ("r_fwd must be a list of integers", knob("r_fwd", [True] * 12)),
    ("r_fwd must be a list of integers", knob("r_fwd", [1.0] * 12)),
    ("r_bwd must be a list of integers", knob("r_bwd", 1)),
    ("pipeline degree 0 outside", knob("r_bwd", [0] * 12)),
    ("pipeline degree 99 outside", knob("r_fwd", [99] * 12)),
    ("knobs give 11 degrees for a model of 12 layers", lambda d: d["knobs"].update(r_fwd=[1] * 11, r_bwd=[1] * 11)),
    ("grad_sync must be a string", knob("grad_sync", 1)),
    ("grad_sync must be one of", knob("grad_sync", "later")),
    ("a2a must be one of", knob("a2a", "ring")),
    ("knobs must have exactly the keys", lambda d: d["knobs"].pop("a2a")),
    ("knobs give 12 degrees for a model of 1000 layers", lambda d: d["model"].update(layers=1000)),
    ("layers must be a positive integer at most 1024", lambda d: d["model"].update(layers=10**6)),
    ("layers must be a positive integer", lambda d: d["model"].update(layers=True)),
    ("shared_experts must be an integer", lambda d: d["model"].update(shared_experts=1.5)),
    ("capacity_factor must be a number", lambda d: d["model"].update(capacity_factor=1e308)),
    ("capacity_factor must be a number", lambda d: d["model"].update(capacity_factor="2")),
    ("ep must be a positive integer", lambda d: d["cluster"].update(ep=True)),
    ("order must be a JSON list", lambda d: d.update(order={})),
    ("order must be a list of task names", lambda d: d.update(order=[1, 2])),
    ("policy must be a JSON string", lambda d: d.update(policy=None)),
    ("predicted must be a JSON object", lambda d: d.update(predicted=[])),
    (r"predicted\.step_us is NaN", lambda d: d["predicted"].update(step_us=float("nan"))),
    ("runs .* before its dependency", lambda d: d.update(order=d["order"][::-1])),
    ("version", lambda d: d.update(version=True)),
]


@pytest.mark.parametrize("match,mutate", CASES)
def test_malformed_plan_is_one_line(plan_dict: dict, tmp_path: Path, match: str, mutate) -> None:
    d = json.loads(json.dumps(plan_dict))
    mutate(d)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(rehash(d)))
    t0 = time.perf_counter()
    with pytest.raises(MoeschedError, match=match) as e:
        Plan.load(path)
    assert time.perf_counter() - t0 < 2.0  # refused before a large graph is built
    assert str(e.value).startswith(f"plan {path}:") and "\n" not in str(e.value)


def test_good_plan_loads_and_knobs_round_trip(plan_dict: dict, tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan_dict))
    p = Plan.load(path)
    assert Knobs.from_dict(p.knobs.to_dict()) == p.knobs and p.hash == plan_dict["hash"]


def test_plan_hash_still_guards_edits(plan_dict: dict, tmp_path: Path) -> None:
    d = json.loads(json.dumps(plan_dict))
    d["knobs"]["grad_sync"] = "after_backward"
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(d))
    with pytest.raises(MoeschedError, match="hash mismatch"):
        Plan.load(path)
