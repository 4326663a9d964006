"""Exactness check of pipeline-parallel stages run by a 1F1B (or GPipe) schedule.

``torchrun --nproc_per_node=S -m executor.pipecheck [--microbatches 4] [--schedule 1f1b|gpipe]
[--out r.jsonl]`` splits a small model's layers over S stages (gloo, CPU, fp32;
:func:`moesched.pipeline.stage_layers`), and runs one step of m micro-batches of one
sample each in the order :func:`moesched.pipeline.one_f_one_b` gives every stage: a
forward sends its activations to the next stage (``isend``), a backward receives the
output gradient from it, so micro-batch i's forward interleaves with micro-batch j's
backward; gradients accumulate over the micro-batches. The loss (mean squared error over
the batch: the mean of the micro-batches') and every stage's parameter gradients are
compared with :class:`executor.layers.ReferenceModel` on the whole batch in one process.
Rank 0 prints (and appends to ``--out``) one JSON line: {"stages", "microbatches",
"schedule", "ok", "loss", "ref_loss", "max_abs_err", "order"}. Exit 0 when all match (rtol
1e-4, atol 1e-5), 1 when not, 2 with one line ``moesched: error: ...`` for bad input.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

from moesched.errors import MoeschedError
from moesched.models import MoEModel
from moesched.pipeline import gpipe, one_f_one_b, stage_layers

from executor import errors
from executor.layers import ReferenceModel, make_batch
from executor.run import rank_and_world


def model(microbatches: int, stages: int) -> MoEModel:
    """Small SwiGLU MoE, 8 experts top-2, a shared expert, GQA and RoPE, 2 layers per stage."""
    return MoEModel(name="pipe-check", layers=2 * stages, d_model=32, heads=4, kv_heads=2, seq_len=8,
                    micro_batch=microbatches, ffn_hidden=32, experts=8, top_k=2, expert_kind="swiglu",
                    shared_experts=1, dtype="fp32", rope_theta=10000.0)


def run_stage(m: MoEModel, ref: ReferenceModel, s: int, S: int, order: list[tuple[str, int]],
              x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """This stage's part of the step in ``order``; returns the summed loss (last stage) or 0."""
    lay = stage_layers(m.layers, S)[s]
    n = x.shape[0]
    acts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    sends, loss = [], torch.zeros(())
    for kind, i in order:
        if kind == "F":
            if s == 0:
                inp = x[i:i + 1]
            else:
                inp = torch.empty(1, m.seq_len, m.d_model)
                dist.recv(inp, s - 1)
                inp.requires_grad_()
            out = ref.blocks(inp, lay.start, lay.stop)
            if s == S - 1:
                out = ((out - target[i:i + 1]) ** 2).mean() / n   # the batch loss's share
                loss = loss + out.detach()
            else:
                sends.append(dist.isend(out.detach().contiguous(), s + 1))
            acts[i] = (inp, out)
        else:
            inp, out = acts.pop(i)
            if s == S - 1:
                out.backward()
            else:
                g = torch.empty_like(out)
                dist.recv(g, s + 1)
                out.backward(g)
            if s > 0:
                sends.append(dist.isend(inp.grad.contiguous(), s - 1))
    for h in sends:
        h.wait()
    return loss


def run(a: argparse.Namespace) -> int:
    rank, world = rank_and_world()
    if world < 2:
        raise MoeschedError("a pipeline check needs at least 2 ranks (one per stage)")
    if a.microbatches < 1:
        raise MoeschedError(f"--microbatches must be >= 1, got {a.microbatches}")
    dist.init_process_group("gloo")
    m = model(a.microbatches, world)
    sched = (one_f_one_b if a.schedule == "1f1b" else gpipe)(world, a.microbatches)
    x, target = make_batch(m, 0)
    ref = ReferenceModel(m, seed=0)
    loss = run_stage(m, ref, rank, world, sched[rank], x, target)
    mine = {id(p) for l in stage_layers(m.layers, world)[rank] for p in ref.module.blocks[l].parameters()}
    grads = {n: p.grad.clone() for n, p in ref.module.named_parameters() if id(p) in mine and p.grad is not None}
    whole = ReferenceModel(m, seed=0)
    ref_loss = ((whole.blocks(x) - target) ** 2).mean()
    ref_loss.backward()
    ref_g = dict(whole.module.named_parameters())
    err = max(float((g - ref_g[n].grad).abs().max()) for n, g in grads.items())
    ok = all(torch.allclose(g, ref_g[n].grad, rtol=1e-4, atol=1e-5) for n, g in grads.items()) and bool(grads)
    t = torch.tensor([loss.item(), 0.0 if ok else 1.0, err])
    dist.all_reduce(t)  # the last stage's loss; failures; (summed) errors
    rec = {"stages": world, "microbatches": a.microbatches, "schedule": a.schedule, "loss": t[0].item(),
           "ref_loss": ref_loss.item(), "max_abs_err": t[2].item(),
           "ok": t[1].item() == 0 and abs(t[0].item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item()),
           "order": [f"{k}{i}" for k, i in sched[0]]}
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
    ap = argparse.ArgumentParser(prog="executor.pipecheck")
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--schedule", choices=("1f1b", "gpipe"), default="1f1b")
    ap.add_argument("--out", default=None)
    return errors.guarded(lambda: run(ap.parse_args(argv)))


if __name__ == "__main__":
    errors.exit_now(main())
