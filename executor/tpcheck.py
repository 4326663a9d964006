"""Exactness check of the tensor-parallel blocks (:mod:`executor.tp`) against
:class:`executor.layers.ReferenceModel`.

``torchrun --nproc_per_node=T -m executor.tpcheck [--out r.jsonl]`` runs, on one TP group of
all T ranks (gloo/CPU), each case of :data:`CASES` with and without sequence parallelism:
the TP group's batch (:func:`executor.layers.make_batch` of rank 0) through every block,
the loss mean((y - target)^2), backward; then compares the loss and every gradient of this
rank's shard with the same slice of the reference's gradients (fp32, rtol 1e-4, atol
1e-5), and asserts that every rank of the group computed the same dispatch (router idx) in
every block. Rank 0 prints one JSON line per case: {"case", "tp", "sp", "ok", "loss",
"ref_loss", "max_abs_err", "worst", "same_dispatch"}. Exit 0 when all match, 1 when one
does not, 2 with one line ``moesched: error: ...`` for any error.
"""
from __future__ import annotations

import json
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from moesched.errors import MoeschedError
from moesched.layouts import Layout, check_layout
from moesched.cluster import Cluster
from moesched.models import MoEModel

from executor import errors
from executor.layers import ReferenceModel, make_batch
from executor.run import rank_and_world
from executor.tp import TPShard, block_forward, grads_of as _grads_of, sync_replicated_grads

RTOL, ATOL = 1e-4, 1e-5
_BASE = dict(layers=2, d_model=32, seq_len=8, micro_batch=2, ffn_hidden=32, dtype="fp32")
#: Small models that divide over 2 and 4 ranks: GPT experts dropless; SwiGLU experts with a
#: shared expert, capacity (dropped copies), grouped-query attention, q/k norms and RoPE.
CASES = {
    "gpt-dropless": MoEModel(name="tp-gpt", heads=4, experts=8, top_k=2, **_BASE),  # type: ignore[arg-type]
    "swiglu-shared-capacity-gqa": MoEModel(name="tp-swiglu", heads=8, kv_heads=4, experts=4, top_k=2,
                                           expert_kind="swiglu", shared_experts=1, capacity_factor=1.0,
                                           qk_norm=True, rope_theta=10000.0, **_BASE),  # type: ignore[arg-type]
}


def run_case(m: MoEModel, sp: bool, rank: int, t: int) -> dict:
    """One case on the TP group of all ranks; returns rank 0's result record."""
    check_layout(m, Cluster(1, t), Layout(t, sp))
    ref = ReferenceModel(m, seed=0)
    shards = [TPShard(blk, m, rank, t) for blk in ref.module.blocks]
    x, target = make_batch(m, 0, seed=0)
    ref_loss = ref.rank_loss(x, target)
    ref_loss.backward()
    ref_loss = ref_loss.detach()
    B, L, M = x.shape
    h, tgt = x.reshape(B * L, M), target.reshape(B * L, M)
    if sp:
        h, tgt = h.chunk(t, 0)[rank], tgt.chunk(t, 0)[rank]
    same = True
    for p in shards:
        h, idx = block_forward(h, p, m, B, L, None, sp)
        every = [torch.empty_like(idx) for _ in range(t)]
        dist.all_gather(every, idx)
        same &= all(torch.equal(every[0], i) for i in every)
    loss = ((h - tgt) ** 2).sum() / (B * L * M)
    loss.backward()
    total = loss.detach().clone()
    if sp:
        dist.all_reduce(total)
    worst, name, ok = 0.0, "", bool(same)
    for l, (p, blk) in enumerate(zip(shards, ref.module.blocks)):
        sync_replicated_grads(p, None, sp)
        want = TPShard(_grads_of(blk), m, rank, t)  # type: ignore[arg-type]
        for n, mine in p.named_parameters():
            theirs = dict(want.named_parameters())[n].detach()
            err = float((mine.grad - theirs).abs().max())
            ok &= bool(torch.allclose(mine.grad, theirs, rtol=RTOL, atol=ATOL))
            if err >= worst:
                worst, name = err, f"L{l}.{n}"
    ok &= abs(float(total) - float(ref_loss)) <= ATOL + RTOL * abs(float(ref_loss))
    flag = torch.tensor([0.0 if ok else 1.0, worst])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return {"tp": t, "sp": sp, "ok": flag[0].item() == 0.0, "loss": float(total), "ref_loss": float(ref_loss),
            "max_abs_err": flag[1].item(), "worst": name, "same_dispatch": bool(same)}


def main(argv: list[str] | None = None) -> int:
    return errors.guarded(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    ap = errors.ArgParser(prog="python -m executor.tpcheck")
    ap.add_argument("--out", help="append one JSON line per case here (rank 0)")
    a = ap.parse_args(argv)
    rank, world = rank_and_world()
    if world < 2:
        raise MoeschedError("executor.tpcheck needs a TP group of at least 2 ranks (torchrun --nproc_per_node=2)")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    all_ok = True
    for case, m in CASES.items():
        for sp in (False, True):
            res = {"case": case, **run_case(m, sp, rank, world)}
            all_ok &= res["ok"]
            if rank == 0:
                line = json.dumps(res)
                print(line, flush=True)
                if a.out:
                    with open(a.out, "a") as f:
                        f.write(line + "\n")
    dist.barrier()
    dist.destroy_process_group()
    return 0 if all_ok else 1


if __name__ == "__main__":
    errors.exit_now(main())
