"""Exactness check of :class:`executor.lm.LMStep` against :class:`executor.lm.ReferenceLM`.

``torchrun --nproc_per_node=N -m executor.lmcheck --out r.jsonl`` runs, for a few tiny
language models (untied and tied embeddings, GQA + RoPE + qk-norm, a plan with chunks),
two micro-batches per rank by the plan on gloo (``--device cuda``: NCCL, CUDA graphs) and compares the loss of each and the
accumulated gradients of every parameter of this rank with the reference's (all ranks'
batches, all experts, plain autograd). Rank 0 appends one JSON line per model:
{"model", "ok", "loss", "ref_loss", "max_abs_err", "worst"}. Exit status 0 when every
model matches, 1 when one does not, 2 with one ``moesched: error:`` line for an error.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

from moesched.cluster import Cluster
from moesched.knobs import Knobs

from executor import errors
from executor.lm import LMStep, MoELM, ReferenceLM
from executor.run import rank_and_world
from executor.testplans import make_plan, tiny_model

VOCAB = 37


def variants(world: int) -> list[tuple[str, object, Knobs]]:
    """(label, model, knobs): plain, tied, GQA/RoPE/qk-norm with chunked degrees."""
    e = 2 * world
    base = dict(vocab_size=VOCAB, experts=e, expert_kind="swiglu")
    return [
        ("untied", tiny_model(**base), Knobs((1, 1), (1, 1))),
        ("tied-gelu-shared", tiny_model(**{**base, "expert_kind": "gpt"}, shared_experts=1, tie_embeddings=True),
         Knobs((1, 1), (1, 1))),
        ("gqa-rope-qknorm", tiny_model(**base, heads=4, kv_heads=2, head_dim=6, rope_theta=10000.0, qk_norm=True,
                                       norm_eps=1e-5, norm_topk_prob=False, capacity_factor=1.0),
         Knobs(r_fwd=(2, 1), r_bwd=(1, 4), at_chunked=False, grad_chunk_bytes=1001)),
    ]


def batch(rank: int, micro: int, m) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * micro + rank)
    t = torch.randint(0, VOCAB, (m.micro_batch, m.seq_len + 1), generator=g)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def check(label: str, m, knobs: Knobs, rank: int, world: int, tol: float, dev: torch.device) -> dict:
    plan = make_plan(m, Cluster(1, world), knobs)
    ep = plan.cluster.ep_size
    lm = MoELM(m, ep=ep, ep_rank=rank % ep, seed=3, device=dev)
    step = LMStep(lm, plan)
    ref = ReferenceLM(m, seed=3)
    losses, ref_losses = [], []
    for micro in range(2):   # gradients accumulate over both micro-batches
        bs = [batch(r, micro, m) for r in range(world)]
        losses.append(float(step(*(t.to(dev) for t in bs[rank]))))
        rl = ref.loss([b[0] for b in bs], [b[1] for b in bs])
        rl.backward()
        ref_losses.append(float(rl.detach()))
    el = m.experts // ep
    q = rank % ep
    pairs = [(f"outer{i}", a.grad, b.grad) for i, (a, b) in enumerate(zip(lm.outer_params(), ref.lm.outer_params()))]
    for l, (mine, theirs) in enumerate(zip(lm.moe.blocks, ref.lm.moe.blocks)):
        pairs += [(f"L{l}.dense{i}", a.grad, b.grad) for i, (a, b) in
                  enumerate(zip(mine.dense_params(), theirs.dense_params()))]
        pairs += [(f"L{l}.expert{i}", a.grad, b.grad[q * el:(q + 1) * el]) for i, (a, b) in
                  enumerate(zip(mine.expert_params(), theirs.expert_params()))]
    worst, name, ok = 0.0, "", True
    for n, a, b in pairs:
        a = a.detach().cpu()
        err = float((a - b).abs().max())
        ok &= bool(torch.allclose(a, b, rtol=tol, atol=tol))
        if err >= worst:
            worst, name = err, n
    ok &= all(abs(a - b) <= tol * (1 + abs(b)) for a, b in zip(losses, ref_losses))
    flag = torch.tensor([0.0 if ok else 1.0, worst], device=dev)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return {"model": label, "ok": flag[0].item() == 0.0, "loss": losses, "ref_loss": ref_losses,
            "max_abs_err": flag[1].item(), "worst": name}


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m executor.lmcheck")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    a = ap.parse_args(argv)
    rank, world = rank_and_world()
    torch.manual_seed(0)
    if a.device == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=dev)
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo")
    try:
        good = True
        for label, m, knobs in variants(world):
            r = check(label, m, knobs, rank, world, a.tol, dev)
            good &= r["ok"]
            if rank == 0:
                with open(a.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
        dist.barrier()  # no rank tears the group down while a peer still uses it
        return 0 if good else 1
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    return errors.guarded(lambda: _main(argv))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    errors.exit_now(main())
