"""Exactness check of the DEP forward pass (:mod:`executor.dep`) against the reference.

``torchrun --nproc_per_node=P -m executor.depcheck --ag A [--eg E] [--r1 R1] [--r2 R2]
[--shared] [--experts N] [--out r.jsonl]`` runs a small model's forward on A attention ranks and P - A expert ranks
(gloo, CPU, fp32): every attention rank's samples (:func:`executor.layers.make_batch` of
that rank, r1 micro-batches of m_a = 2 samples) through every layer, compared with
:meth:`executor.layers.ReferenceModel.blocks` of the same samples on one process. Rank 0
prints (and appends to ``--out``) one JSON line: {"ag", "eg", "r1", "r2", "shared", "ok",
"max_abs_err", "copies"}. Exit 0 when every attention rank matches (atol 1e-5, rtol 1e-4),
1 when one does not, 2 with one line ``moesched: error: ...`` for bad input.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

from moesched.errors import MoeschedError
from moesched.findep import DepConfig
from moesched.models import MoEModel

from executor import errors
from executor.dep import DepRanks, attention_forward, build_module, check_model, expert_serve
from executor.layers import ReferenceModel, make_batch
from executor.run import rank_and_world

M_A = 2


def model(r1: int, shared: bool, experts: int = 12) -> MoEModel:
    """Small SwiGLU model, 12 experts top-2 by default (they divide over 1-4 and 6 expert
    ranks), grouped-query attention, RoPE, one dense layer."""
    return MoEModel(name="dep-check", layers=3, d_model=32, heads=4, kv_heads=2, seq_len=8, micro_batch=r1 * M_A,
                    ffn_hidden=32, experts=experts, top_k=2, expert_kind="swiglu", shared_experts=int(shared),
                    dtype="fp32", rope_theta=10000.0, dense_layers=(1,), dense_ffn_hidden=48)


def setup(a: argparse.Namespace, world: int) -> tuple[DepRanks, DepConfig, MoEModel]:
    """The groups, schedule and model of the run; MoeschedError for bad input."""
    if not 1 <= a.ag < world:
        raise MoeschedError(f"--ag must leave at least one expert rank: 1 <= ag < {world}, got {a.ag}")
    if a.eg is not None and a.ag + a.eg != world:
        raise MoeschedError(f"--ag {a.ag} + --eg {a.eg} = {a.ag + a.eg} ranks, but the world has {world}")
    ranks, cfg = DepRanks(a.ag, world - a.ag), DepConfig(M_A, a.r1, a.r2)
    m = model(a.r1, a.shared, a.experts)
    check_model(m, ranks, cfg)
    return ranks, cfg, m


def run(a: argparse.Namespace) -> int:
    rank, world = rank_and_world()
    dist.init_process_group("gloo")
    try:
        ranks, cfg, m = setup(a, world)
    except MoeschedError as e:  # every rank prints its line before any exits (torchrun ends the rest at the first exit)
        errors.fail(str(e))
        dist.barrier()
        os._exit(errors.EXIT_USER)  # at once: no teardown for torchrun's closing signal to interrupt
    mod = build_module(m, ranks, rank)
    err, copies = 0.0, 0
    with torch.no_grad():
        if ranks.is_attention(rank):
            x, _ = make_batch(m, rank)
            y = attention_forward(m, mod, ranks, cfg, x)
            ref = ReferenceModel(m, seed=0).blocks(x)
            err = float((y - ref).abs().max())
            ok = bool(torch.allclose(y, ref, rtol=1e-4, atol=1e-5))
        else:
            copies = expert_serve(m, mod, ranks, cfg)
            ok = True
    flags = torch.tensor([0.0 if ok else 1.0, err, float(copies)])
    dist.all_reduce(flags[:1])
    dist.all_reduce(flags[1:2], op=dist.ReduceOp.MAX)
    dist.all_reduce(flags[2:])
    rec = {"ag": ranks.ag, "eg": ranks.eg, "r1": a.r1, "r2": a.r2, "shared": a.shared, "ok": flags[0].item() == 0,
           "max_abs_err": flags[1].item(), "copies": int(flags[2].item())}
    if rank == 0:
        print(json.dumps(rec), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
    dist.barrier()
    dist.destroy_process_group()
    return 0 if rec["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ap = errors.ArgParser(prog="executor.depcheck")
    ap.add_argument("--ag", type=int, default=1, help="attention ranks (the rest are expert ranks)")
    ap.add_argument("--r1", type=int, default=2, help="micro-batches per attention rank")
    ap.add_argument("--r2", type=int, default=2, help="token chunks per micro-batch on the expert side")
    ap.add_argument("--eg", type=int, default=None, help="expert ranks (default: the world less --ag; must match)")
    ap.add_argument("--experts", type=int, default=12,
                    help="routed experts per layer (must divide over the expert ranks)")
    ap.add_argument("--shared", action="store_true", help="one shared expert per layer")
    ap.add_argument("--out", default=None)
    return errors.guarded(lambda: run(ap.parse_args(argv)))


if __name__ == "__main__":
    errors.exit_now(main())
