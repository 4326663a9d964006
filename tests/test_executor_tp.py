"""Tensor-parallel attention and the PPMoE layer (executor.tp) give the reference model's loss
and gradients within fp32 tolerance on gloo, with 2 and 4 ranks, with and without sequence
parallelism; every rank of the TP group computes the same dispatch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from localhost import free_port

ROOT = Path(__file__).resolve().parents[1]


def torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "--master_addr=127.0.0.1", "-m", "executor.tpcheck", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)


@pytest.mark.parametrize("nproc", [2, 4])
def test_tp_blocks_match_the_reference(nproc: int, tmp_path: Path) -> None:
    out = tmp_path / "tp.jsonl"
    p = torchrun(nproc, ["--out", str(out)])
    assert p.returncode == 0, p.stderr[-4000:]
    res = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["case"], r["sp"]) for r in res] == [(c, sp) for c in ("gpt-dropless", "swiglu-shared-capacity-gqa")
                                                   for sp in (False, True)]
    for r in res:
        assert r["ok"] and r["same_dispatch"] and r["tp"] == nproc, r
        assert r["max_abs_err"] < 1e-5 and abs(r["loss"] - r["ref_loss"]) < 1e-5 * abs(r["ref_loss"])


def test_one_rank_is_refused() -> None:
    p = torchrun(1, [])
    assert p.returncode != 0 and "at least 2 ranks" in p.stderr


@pytest.mark.parametrize("t", [2, 4])
def test_memory_model_counts_the_shards_the_executor_allocates(t: int) -> None:
    """layouts.param_counts (the memory model's parameter term) = the elements of the TPShard
    each rank allocates: dense (attention, norms, router, shared experts) and routed experts."""
    from executor.layers import MoEModule
    from executor.tp import TPShard
    from executor.tpcheck import CASES
    from moesched.layouts import Layout, param_counts

    for m in CASES.values():
        full = MoEModule(m, ep=1)
        dense, expert = param_counts(m, Layout(t))
        for r in range(t):
            shards = [TPShard(blk, m, r, t) for blk in full.blocks]
            ex = sum(p.numel() for s in shards for n, p in s.named_parameters() if n in ("w1", "w2", "w3"))
            de = sum(p.numel() for s in shards for p in s.parameters()) - ex
            assert (de, ex) == (dense, expert), (m.name, r)
