"""The held-out validation sets (benchmarks/heldout-shapes*.json) stay held out: no shape
shares its width, sequence length, expert hidden size or tokens per step with a shape the
one-GPU profiles measure, and the GPU-bound set is the host-bound one at four times the
micro-batch (docs/results.md, "Model shapes the profile did not measure")."""
from __future__ import annotations

from pathlib import Path

import pytest

from moesched.configs import load_configs
from moesched.models import MoEModel

ROOT = Path(__file__).resolve().parents[1]
PROFILED = ("results/h200x1/configs-1gpu.json", "results/h200x1/configs-1gpu-dtypes.json",
            "results/h200x1/configs-1gpu-dtypes2.json")
HELD_OUT = ("benchmarks/heldout-shapes.json", "benchmarks/heldout-shapes-4x.json")


def _models(files: tuple[str, ...]) -> list[MoEModel]:
    return [c.model for f in files for c in load_configs(ROOT / f)]


def _tokens(m: MoEModel) -> int:
    return m.seq_len * m.micro_batch


@pytest.mark.parametrize("held_out", HELD_OUT)
def test_held_out_shapes_differ_from_every_profiled_one(held_out: str) -> None:
    profiled = _models(PROFILED)
    shared = [(h.name, p.name, what) for h in _models((held_out,)) for p in profiled
              for what, key in (("width", lambda m: m.d_model), ("sequence", lambda m: m.seq_len),
                                ("expert hidden", lambda m: m.ffn_hidden), ("tokens", _tokens))
              if key(h) == key(p)]
    assert shared == []


def test_gpu_bound_set_is_the_host_bound_one_at_four_times_the_micro_batch() -> None:
    small, large = (_models((f,)) for f in HELD_OUT)
    assert [f"{m.name}-4x" for m in small] == [m.name for m in large]
    for s, big in zip(small, large):
        assert big.to_dict() == dict(s.to_dict(), name=big.name, micro_batch=4 * s.micro_batch)
