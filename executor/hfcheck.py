"""A Hugging Face checkpoint trained by the plan, checked against the reference outputs of
``transformers`` (computed beforehand by the caller, e.g. ``tests/test_hf.py``).

``torchrun --nproc_per_node=N -m executor.hfcheck --case DIR [--case DIR2 ...] --out r.jsonl``
(DIR holding ``ckpt/``, ``ref.pt`` and ``grads.safetensors``): for each case every rank builds the model of ``DIR/config.json``
(:meth:`MoEModel.from_hf_config`, fp32), loads ``DIR``'s safetensors (its experts only), runs
one step by a plan with chunked degrees on its rows of the batch and compares its logits,
the loss and the gradient of every parameter it holds with transformers'. ``ref.pt`` holds
``tokens``, ``targets`` [N*B, L] (rank r: rows [r*B, (r+1)*B)), ``logits`` [N*B, L, V] and
``loss`` (mean cross-entropy of the whole batch); ``grads.safetensors`` transformers'
gradients under its parameter names. Rank 0 appends per case {"case", "ok", "loss", "ref_loss", "logits_err",
"grad_err", "worst"}. Exit 0 when all match, 1 when not, 2 with one ``moesched: error:`` line.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

from moesched.cluster import Cluster
from moesched.knobs import Knobs
from moesched.models import MoEModel

from executor import errors
from executor.hf import Reader, load_hf_weights, named_params
from executor.lm import LMStep, MoELM
from executor.run import rank_and_world
from executor.testplans import make_plan


def check(case: str, rank: int, world: int, tol: float) -> dict:
    """One case (module docstring); the result, agreed over ranks."""
    ckpt = os.path.join(case, "ckpt")
    ref = torch.load(os.path.join(case, "ref.pt"))
    B = ref["tokens"].shape[0] // world
    m = MoEModel.from_hf_config(ckpt, seq_len=ref["tokens"].shape[1], micro_batch=B, dtype="fp32")
    plan = make_plan(m, Cluster(1, world), Knobs(r_fwd=(2,) * m.layers, r_bwd=(1,) + (2,) * (m.layers - 1),
                                                 grad_chunk_bytes=4096))
    ep = plan.cluster.ep_size
    lm = MoELM(m, ep=ep, ep_rank=rank % ep)
    load_hf_weights(lm, ckpt)
    want = MoELM(m, ep=ep, ep_rank=rank % ep)     # transformers' gradients, laid out as lm
    load_hf_weights(want, ckpt, Reader(os.path.join(case, "grads.safetensors")))
    step = LMStep(lm, plan, keep_logits=True)
    rows = slice(rank * B, (rank + 1) * B)
    loss = float(step(ref["tokens"][rows], ref["targets"][rows]))
    V = m.vocab_size
    lg = ref["logits"][rows].reshape(-1, V)
    ok = bool(torch.allclose(step.logits, lg, rtol=tol, atol=tol))
    logits_err = float((step.logits - lg).abs().max())
    ok &= abs(loss - float(ref["loss"])) <= tol * (1 + abs(float(ref["loss"])))
    worst, name = 0.0, ""
    for (n, p), (_, q) in zip(named_params(lm), named_params(want)):
        err = float((p.grad - q.detach()).abs().max())
        ok &= bool(torch.allclose(p.grad, q.detach(), rtol=tol, atol=tol))
        if err >= worst:
            worst, name = err, n
    flag = torch.tensor([0.0 if ok else 1.0, logits_err, worst])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return {"case": os.path.basename(case), "ok": flag[0].item() == 0.0, "loss": loss, "ref_loss": float(ref["loss"]),
            "logits_err": flag[1].item(), "grad_err": flag[2].item(), "worst": name}


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m executor.hfcheck")
    ap.add_argument("--case", action="append", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args(argv)
    rank, world = rank_and_world()
    dist.init_process_group("gloo")
    try:
        good = True
        for case in a.case:
            res = check(case, rank, world, a.tol)
            good &= res["ok"]
            if rank == 0:
                with open(a.out, "a") as f:
                    f.write(json.dumps(res) + "\n")
        dist.barrier()  # no rank tears the group down while a peer still uses it
        return 0 if good else 1
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    return errors.guarded(lambda: _main(argv))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    errors.exit_now(main())
