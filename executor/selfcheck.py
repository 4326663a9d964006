"""Exactness check of the executor against :class:`executor.layers.ReferenceModel`.

``torchrun --nproc_per_node=N -m executor.selfcheck --plan plan.json [--steps 2] [--out r.json]``
runs ``steps`` training steps of the plan (fp32, gloo/CPU or NCCL/GPU) on the synthetic
batches of :func:`executor.layers.make_batch` and compares, after every step, the loss and
every parameter gradient of this rank (dense, and its own experts) with the reference's
(all ranks' batches, all experts, plain autograd). Rank 0 prints (and appends to --out) one
JSON line per plan: {"plan", "ok", "loss", "ref_loss", "max_abs_err", "worst", "steps",
"dropped" (copies over capacity, all ranks), "tasks"}.
"""
from __future__ import annotations

import argparse
import json
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from moesched.plan import Plan

from executor.layers import MoEModule, ReferenceModel, make_batch
from executor.runtime import PlannedStep


def compare(step: PlannedStep, ref: ReferenceModel, ep: int, q: int, rtol: float, atol: float
            ) -> tuple[float, str, bool]:
    """Max abs error over all gradients, the worst parameter, and allclose of all."""
    worst, name, ok = 0.0, "", True
    el = ref.cfg.experts // ep
    for l, (mine, theirs) in enumerate(zip(step.module.blocks, ref.module.blocks)):
        pairs = [(f"L{l}.dense{i}", a.grad, b.grad) for i, (a, b) in
                 enumerate(zip(mine.dense_params(), theirs.dense_params()))]
        pairs += [(f"L{l}.expert{i}", a.grad, b.grad[q * el:(q + 1) * el]) for i, (a, b) in
                  enumerate(zip(mine.expert_params(), theirs.expert_params()))]
        for n, a, b in pairs:
            a = a.detach().float().cpu()
            err = float((a - b).abs().max())
            ok &= bool(torch.allclose(a, b, rtol=rtol, atol=atol))
            if err >= worst:
                worst, name = err, n
    return worst, name, ok


def check_plan(plan: Plan, a: argparse.Namespace, rank: int, world: int, dev: torch.device
               ) -> tuple[bool, dict]:
    """Run a.steps steps of plan; compare loss and gradients after each with the reference."""
    m = plan.model
    ep = plan.cluster.ep_size
    module = MoEModule(m, ep=ep, ep_rank=rank % ep, seed=a.seed, device=dev, dtype=torch.float32)
    step = PlannedStep(module, plan, issue=a.issue)
    ref = ReferenceModel(m, seed=a.seed, init_device=dev)  # same initial values as the module
    batches = [tuple(t.cpu() for t in make_batch(m, r, a.seed, device=dev)) for r in range(world)]
    ref_loss = ref.loss([b[0] for b in batches], [b[1] for b in batches])
    ref_loss.backward()
    ref_loss = float(ref_loss.detach())
    x, t = batches[rank]
    res: dict = {}
    ok = True
    for s in range(a.steps):
        loss = step(x, t)
        err, worst, good = compare(step, ref, ep, rank % ep, a.rtol, a.atol)
        good &= abs(loss - ref_loss) <= a.atol + a.rtol * abs(ref_loss)
        flag = torch.tensor([0.0 if good else 1.0, err])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        dropped = torch.tensor([step.last_dropped])
        dist.all_reduce(dropped)
        ok &= flag[0].item() == 0.0
        res = {"ok": ok, "loss": loss, "ref_loss": ref_loss, "max_abs_err": flag[1].item(), "worst": worst,
               "steps": s + 1, "dropped": int(dropped), "tasks": len(plan.order)}
    return ok, res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m executor.selfcheck")
    ap.add_argument("--plan", required=True, nargs="+", help="one or more plan files, checked in turn")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--out")
    ap.add_argument("--issue", choices=("single", "threads"), default="single")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda") if cuda else torch.device("cpu")
    all_ok = True
    for path in a.plan:
        ok, res = check_plan(Plan.load(path), a, rank, world, dev)
        all_ok &= ok
        if rank == 0:
            line = json.dumps({"plan": path, **res})
            print(line, flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(line + "\n")
    dist.barrier()
    dist.destroy_process_group()
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
