"""Per-chunk loads under uneven routing (moesched.imbalance_chunks)."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from moesched.cluster import Cluster
from moesched.graph import build
from moesched.imbalance import expected
from moesched.imbalance_chunks import chunk_rows, split_row
from moesched.imbalance_plans import sampled_loads
from moesched.knobs import Knobs
from moesched.models import PRESETS
from moesched.profile import Profile
from moesched.sim import simulate

PROFILE = Profile.load("h200x4-nvlink")
CLUSTER = Cluster(1, 4, ep=4)
MODEL = dataclasses.replace(PRESETS["Mixtral-8x7B"], layers=2)


@pytest.mark.parametrize("row, n", [([500, 300, 0, 200], 2), ([8192, 0, 0, 0, 1, 1, 1, 1], 4), ([3, 1], 8),
                                    ([0, 0, 0], 3), ([1000] * 8, 7)])
def test_split_row_sums_and_support(row: list[int], n: int) -> None:
    chunks = split_row(row, n, random.Random(1))
    assert len(chunks) == n and all(min(c) >= 0 for c in chunks)
    assert [sum(col) for col in zip(*chunks)] == row                  # the chunks sum to the row
    sizes = sorted(sum(c) for c in chunks)
    assert sizes[-1] - sizes[0] <= 1                                  # each chunk its slice of the copies


def test_split_is_hypergeometric_on_average() -> None:
    """Chunk 0 of 4 from a row of 4000 copies: mean 1/4 of each expert's copies, spread near
    the hypergeometric standard deviation."""
    row = [2000, 1000, 600, 400]
    draws = [split_row(row, 4, random.Random(s))[0] for s in range(400)]
    for e, x in enumerate(row):
        vals = [d[e] for d in draws]
        mean = sum(vals) / len(vals)
        sd = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
        p, N, m = x / 4000, 4000, 1000
        assert mean == pytest.approx(x / 4, rel=0.02)
        assert sd == pytest.approx((m * p * (1 - p) * (N - m) / (N - 1)) ** 0.5, rel=0.25)


def test_chunk_rows_seeded() -> None:
    kept = ((100, 50, 25, 25), (10, 20, 30, 40))
    assert chunk_rows(kept, 3, 7) == chunk_rows(kept, 3, 7)
    assert [[sum(c[s][e] for c in chunk_rows(kept, 3, 7)) for e in range(4)] for s in range(2)] == \
        [list(r) for r in kept]


def _plan(r: int) -> tuple[Knobs, list[str]]:
    k = Knobs.uniform(MODEL.layers, r)
    return k, simulate(build(MODEL, CLUSTER, PROFILE, k)).order()


def test_one_chunk_unchanged_and_chunks_cost_time() -> None:
    loads = sampled_loads("zipf:1.2,drift=0.2", MODEL, CLUSTER, 2)
    k1, o1 = _plan(1)
    assert expected(MODEL, CLUSTER, PROFILE, k1, o1, loads, True).mean_us == \
        expected(MODEL, CLUSTER, PROFILE, k1, o1, loads).mean_us
    small = dataclasses.replace(MODEL, micro_batch=1, seq_len=256)   # few tokens a chunk: large draws noise
    gpu = Profile.load("analytic-h200x4-nvlink")                     # no host costs: the GPU bounds the step
    loads = sampled_loads("even", small, CLUSTER, 2)
    k = Knobs.uniform(small.layers, 8)
    o = simulate(build(small, CLUSTER, gpu, k)).order()
    layer = expected(small, CLUSTER, gpu, k, o, loads)
    chunked = expected(small, CLUSTER, gpu, k, o, loads, True)
    assert layer.mean_us == pytest.approx(layer.even_us, rel=1e-9)   # even routing, layer shares: even
    assert chunked.mean_us > layer.mean_us                           # each chunk waits for its busiest rank


def test_cli_routing_chunks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from moesched.cli import main
    assert main(["simulate", "--model", "Mixtral-8x7B", "--profile", "h200x4-nvlink",
                 "--schedules", "vanilla,fsmoe", "--routing", "zipf:1.2", "--routing-samples", "2",
                 "--routing-chunks"]) == 0
    assert "fsmoe" in capsys.readouterr().out.split("under routing")[1]
