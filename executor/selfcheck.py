"""Exactness check of the executor against :class:`executor.layers.ReferenceModel`.

``torchrun --nproc_per_node=N -m executor.selfcheck --plan plan.json [--steps 2] [--out r.json]``
runs ``steps`` training steps of the plan (fp32, gloo/CPU or NCCL/GPU) on the synthetic
batches of :func:`executor.layers.make_batch` and compares, after every step, the loss and
every parameter gradient of this rank (dense, and its own experts) with the reference's
(all ranks' batches, all experts, plain autograd). Rank 0 prints (and appends to --out) one
JSON line per plan: {"plan", "ok", "loss", "ref_loss", "max_abs_err", "worst", "steps",
"dropped" (copies over capacity, all ranks), "tasks"}. Exit status 0 when every plan
matches, 1 when one does not, 2 with one line ``moesched: error: ...`` on stderr for any
error (:mod:`executor.errors`; a dead or stopped peer: :mod:`executor.watchdog`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from moesched.errors import MoeschedError
from moesched.fileio import check_outputs
from moesched.plan import Plan

from executor import errors
from executor.layers import MoEModule, ReferenceModel, make_batch
from executor.run import rank_and_world
from executor.runtime import PlannedStep
from executor.watchdog import DEFAULT_TIMEOUT_S, Watchdog


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


def _ref_step(ref: ReferenceModel, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The reference's loss over every rank's batch, with fresh gradients."""
    for p in ref.module.parameters():
        p.grad = None
    loss = ref.loss([b[0] for b in batches], [b[1] for b in batches])
    loss.backward()
    return float(loss.detach())


def check_plan(plan: Plan, a: argparse.Namespace, rank: int, world: int, dev: torch.device
               ) -> tuple[bool, dict]:
    """Run a.steps steps of plan; compare loss and gradients after each with the reference."""
    m = plan.model
    ep = plan.cluster.ep_size
    module = MoEModule(m, ep=ep, ep_rank=rank % ep, seed=a.seed, device=dev, dtype=torch.float32)
    step = PlannedStep(module, plan, issue=a.issue)
    ref = ReferenceModel(m, seed=a.seed, init_device=dev)  # same initial values as the module
    batches = [tuple(t.cpu() for t in make_batch(m, r, a.seed, device=dev)) for r in range(world)]
    ref_loss = _ref_step(ref, batches)
    x, t = batches[rank]
    res: dict = {}
    ok = True
    for s in range(a.steps):
        loss = step(x, t)
        err, worst, good = compare(step, ref, ep, rank % ep, a.rtol, a.atol)
        good &= abs(loss - ref_loss) <= a.atol + a.rtol * abs(ref_loss)
        if m.router == "deepseek_v3":  # both update the selection bias; the next step uses it
            ref.update_bias()
            good &= all(torch.equal(mine.e_bias.cpu(), theirs.e_bias)
                        for mine, theirs in zip(step.module.blocks, ref.module.blocks) if not mine.dense)
            next_ref = _ref_step(ref, batches)
        flag = torch.tensor([0.0 if good else 1.0, err])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        dropped = torch.tensor([step.last_dropped])
        dist.all_reduce(dropped)
        ok &= flag[0].item() == 0.0
        res = {"ok": ok, "loss": loss, "ref_loss": ref_loss, "max_abs_err": flag[1].item(), "worst": worst,
               "steps": s + 1, "dropped": int(dropped), "tasks": len(plan.order)}
        if m.router == "deepseek_v3":
            ref_loss = next_ref
    return ok, res


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = errors.ArgParser(prog="python -m executor.selfcheck")
    ap.add_argument("--plan", required=True, nargs="+", help="one or more plan files, checked in turn")
    ap.add_argument("--steps", type=int, default=2, help="steps per plan, at least 1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--out", help="append one JSON line per plan here (rank 0)")
    ap.add_argument("--issue", choices=("single", "threads"), default="single")
    ap.add_argument("--timeout", type=float, default=60.0, help="collective timeout in seconds (default 60)")
    ap.add_argument("--heartbeat-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                    help=f"end every rank when a peer gave no heartbeat for this long "
                         f"(default {DEFAULT_TIMEOUT_S:g} s)")
    a = ap.parse_args(argv)
    if a.steps < 1:
        raise MoeschedError(f"--steps must be at least 1, got {a.steps}")
    if not 0 <= a.seed < 2 ** 63:
        raise MoeschedError(f"--seed must be in 0..2**63-1, got {a.seed}")
    for flag, v in (("--rtol", a.rtol), ("--atol", a.atol)):
        if not (math.isfinite(v) and v >= 0):
            raise MoeschedError(f"{flag} must be a finite number at least 0, got {v:g}")
    for flag, v in (("--timeout", a.timeout), ("--heartbeat-timeout", a.heartbeat_timeout)):
        if not (math.isfinite(v) and v > 0):
            raise MoeschedError(f"{flag} must be a positive, finite number of seconds, got {v:g}")
    if a.out is not None:  # appended to, not replaced: the same checks as any output
        check_outputs({"--out": a.out}, {f"--plan {p}": p for p in a.plan})
    return a


def main(argv: list[str] | None = None) -> int:
    return errors.guarded(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    a = parse_args(argv)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    rank, world = rank_and_world()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    try:
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=a.timeout))
    except Exception as e:  # noqa: BLE001 - a peer that never arrives: bounded by --timeout
        raise MoeschedError(f"rank {rank} could not join the {world} ranks within {a.timeout:g} s "
                            f"({type(e).__name__}: {errors.first_line(e)})") from None
    watchdog = Watchdog(rank, world, a.heartbeat_timeout).start()
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
    watchdog.finish()
    dist.destroy_process_group()
    return 0 if all_ok else 1


if __name__ == "__main__":
    errors.exit_now(main())
