"""The memory model (moesched.memory) against the executor's measured peak on CPU-sized
models: one step run in-process (world size 1, gloo), the CPU allocator's running total
read from torch.profiler's memory events (executor/memcheck.py)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from localhost import free_port  # noqa: E402

from executor.memcheck import CASES, compare  # noqa: E402

#: The issue's bound on |model / measured - 1|.
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def world1():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("degree", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"M{c['d_model']}-{c.get('expert_kind', 'gpt')}")
def test_model_within_ten_percent_of_measured_peak(world1, case: dict, degree: int) -> None:
    """Unchunked and in two token chunks per layer (the model ignores degrees: the executor
    keeps every chunk of a layer until the step ends)."""
    r = compare(case, degree)
    assert r["before_step"] < r["peak"] and r["after_step"] <= r["peak"]
    assert abs(r["error"]) <= TOLERANCE, r
