"""Train a small MoE language model by a moesched plan on real text, offline.

    torchrun --nproc_per_node=2 examples/train_moe_lm.py --steps 200 --ckpt-dir ckpt
    torchrun --nproc_per_node=2 examples/train_moe_lm.py --steps 300 --ckpt-dir ckpt --resume

The text is the Python standard library's own sources (``*.py`` beside ``os.py``), read as
bytes: the vocabulary is the 256 byte values. Rank 0 solves a plan for the model on the
world (``moesched.solve``, under ``--profile``; CPUs: the shipped ``cpu-gloo-2``) and sends
it to every rank; the MoE blocks run by the plan, the embedding and head around them
(:mod:`executor.lm`). Batches are drawn by (seed, step, rank), so a resumed run sees the
data an uninterrupted one would. Every ``--log-every`` steps rank 0 prints the loss,
tokens/s (all ranks), the step's wall time (forward, backward, optimizer) and the plan's
tasks as measured (rank 0's timeline; the last block's loss task holds the head and loss)
beside the plan's prediction for them (from the profile).
``--ckpt-every`` saves model and optimizer with ``torch.distributed.checkpoint`` (each
rank its own experts, dense tensors once) to ``--ckpt-dir/step_N``; ``--resume`` continues
from the newest (``--resume DIR/step_N``: from that one). ``--metrics`` appends one JSON line per step (rank 0).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moesched.cluster import Cluster  # noqa: E402
from moesched.errors import MoeschedError  # noqa: E402
from moesched.fileio import check_outputs  # noqa: E402
from moesched.knobs import Knobs  # noqa: E402
from moesched.models import MoEModel  # noqa: E402
from moesched.plan import Plan, from_timeline  # noqa: E402
from moesched.profile import Profile  # noqa: E402

from executor import errors  # noqa: E402
from executor.lm import LMStep, MoELM  # noqa: E402
from executor.routing_record import RoutingRecorder  # noqa: E402
from executor.testplans import make_plan  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="train_moe_lm.py")
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps in all (a resumed run included)")
    ap.add_argument("--stop-at", type=int, default=None, help="stop after this step (the schedule still spans --steps)")
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--experts-per-rank", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8, help="samples per rank per micro-batch")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: NCCL, one GPU per rank")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--profile", default=None,
                    help="profile the plan is solved under (default: cpu-gloo-2 on CPUs, h200x4-nvlink on GPUs)")
    ap.add_argument("--text-bytes", type=int, default=2_000_000)
    ap.add_argument("--ckpt-dir", default=None)
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                    help="continue from CHECKPOINT (a step_N folder), or from the newest in --ckpt-dir")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--metrics", default=None, help="JSON lines, one per step (rank 0)")
    ap.add_argument("--record-routing", default=None, metavar="FILE",
                    help="write every step's routing as a routing trace (docs/formats.md; rank 0)")
    ap.add_argument("--router", default="topk_softmax", help="routing function (moesched.routers)")
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--aux-loss-coef", type=float, default=0.0, help="load-balancing loss coefficient")
    return ap.parse_args(argv)


def load_text(max_bytes: int) -> torch.Tensor:
    """Bytes [N] (int64) of the standard library's sources, files in name order."""
    parts, n = [], 0
    for path in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py"))):
        with open(path, "rb") as f:
            b = f.read()
        parts.append(b)
        n += len(b)
        if n >= max_bytes:
            break
    data = b"".join(parts)[:max_bytes]
    if len(data) < 10_000:
        raise MoeschedError(f"found only {len(data)} bytes of Python sources beside {os.__file__}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def batch(data: torch.Tensor, step: int, micro: int, rank: int, a: argparse.Namespace
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens, targets [batch, seq_len] drawn by (seed, step, micro-batch, rank)."""
    g = torch.Generator().manual_seed(((a.seed * 1_000_003 + step) * 1009 + micro) * 65537 + rank)
    starts = torch.randint(0, data.numel() - a.seq_len - 1, (a.batch,), generator=g)
    rows = torch.stack([data[s:s + a.seq_len + 1] for s in starts.tolist()])
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def solve_plan(m: MoEModel, world: int, profile: str, rank: int) -> Plan:
    """Rank 0 solves (when the profile's layout is the world's); every rank gets the same plan."""
    box: list = [None]
    if rank == 0:
        from moesched.solve.api import solve
        p = Profile.load(profile)
        c = Cluster(1, world)
        if (p.nodes, p.gpus_per_node) != (1, world):   # nothing to predict with: graph order, no prediction
            print(f"profile {p.name} is for {p.nodes}x{p.gpus_per_node} ranks, the world has {world}: "
                  "running the unpipelined plan without a prediction", flush=True)
            box[0] = make_plan(m, c, Knobs((1,) * m.layers, (1,) * m.layers), policy="vanilla").to_dict()
        else:
            res = solve(m, c, p, time_limit_s=5.0)
            box[0] = from_timeline("moesched", m, c, res.schedule.knobs, res.evaluation.timeline, p).to_dict()
    dist.broadcast_object_list(box, src=0)
    return Plan.from_dict(box[0])


def state(lm: MoELM, opt: torch.optim.Optimizer) -> dict:
    """Model and optimizer tensors by name; expert tensors named by their EP rank, so every
    rank saves its own experts and replicated tensors are saved once."""
    q = lm.moe.ep_rank
    named = [("embed", lm.embed), ("norm", lm.norm)] + ([("head", lm.head)] if lm.head is not None else [])
    for l, blk in enumerate(lm.moe.blocks):
        named += [(f"block{l}.{n}", p) for n, p in blk.named_parameters()
                  if not any(p is e for e in blk.expert_params())]
        named += [(f"block{l}.{n}.ep{q}", p) for n, p in blk.named_parameters()
                  if any(p is e for e in blk.expert_params())]
    out: dict = {"model": {n: p.data for n, p in named}, "optim": {}}
    for n, p in named:
        st = opt.state[p]
        if not st:  # a fresh optimizer: state to load into
            st.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        out["optim"].update({f"{n}.{k}": v for k, v in st.items()})
    return out


def newest_checkpoint(root: str) -> tuple[str, int] | None:
    steps = [int(d.split("_")[1]) for d in os.listdir(root) if d.startswith("step_")] if os.path.isdir(root) else []
    return (os.path.join(root, f"step_{max(steps)}"), max(steps)) if steps else None


def resume_point(a: argparse.Namespace) -> tuple[str, int] | None:
    """(checkpoint folder, its step) to resume from, or None."""
    if a.resume is None:
        return None
    if a.resume == "":
        return newest_checkpoint(a.ckpt_dir) if a.ckpt_dir else None
    path = a.resume.rstrip("/")
    tail = os.path.basename(path)
    if not (tail.startswith("step_") and tail[5:].isdigit() and os.path.isdir(path)):
        raise MoeschedError(f"--resume {a.resume}: not a step_N checkpoint folder")
    return path, int(tail[5:])


def lr_at(step: int, a: argparse.Namespace) -> float:
    """Linear warm-up over 10 steps, then cosine to 10 % of --lr at --steps."""
    if step < 10:
        return a.lr * (step + 1) / 10
    return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, a.steps)))))


def init(a: argparse.Namespace) -> torch.device:
    """The process group (gloo, or NCCL with this rank's GPU) and the device."""
    if a.device == "cpu":
        dist.init_process_group("gloo")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MoeschedError("--device cuda: no GPU is visible")
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", device_id=dev)
    return dev


def train(a: argparse.Namespace) -> int:
    if a.record_routing:
        check_outputs({"--record-routing": a.record_routing})
    ck = resume_point(a)
    dev = init(a)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(a.seed)
    m = MoEModel(name="byte-lm", layers=a.layers, d_model=a.d_model, heads=a.heads, kv_heads=a.heads // 2, rope_theta=10000.0,
                 seq_len=a.seq_len, micro_batch=a.batch, ffn_hidden=2 * a.d_model, experts=a.experts_per_rank * world,
                 top_k=a.top_k, expert_kind="swiglu", dtype=a.dtype, vocab_size=256, norm_eps=1e-5,
                 router=a.router, aux_loss_coef=a.aux_loss_coef)
    profile = a.profile or ("cpu-gloo-2" if a.device == "cpu" else "h200x4-nvlink")
    plan = solve_plan(m, world, profile, rank)
    ep = plan.cluster.ep_size
    lm = MoELM(m, ep=ep, ep_rank=rank % ep, seed=a.seed, device=dev)
    step = LMStep(lm, plan)
    recorder = None
    if a.record_routing:
        recorder = RoutingRecorder(m, ep, source="torchrun examples/train_moe_lm.py " + " ".join(sys.argv[1:]),
                              accum=a.accum)
    opt = torch.optim.AdamW(lm.parameters(), lr=a.lr, weight_decay=0.01)
    start = 0
    if ck is not None:
        dcp.load(state(lm, opt), checkpoint_id=ck[0])
        start = ck[1]
        if rank == 0:
            print(f"resumed from {ck[0]}", flush=True)
    data = load_text(a.text_bytes)
    predicted_ms = plan.predicted.get("step_us", float("nan")) / 1e3
    tokens_per_step = world * a.accum * a.batch * a.seq_len
    end = a.steps if a.stop_at is None else min(a.stop_at, a.steps)
    for s in range(start, end):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(s, a)
        loss = 0.0
        for k in range(a.accum):
            loss += float(step(*(t.to(dev) for t in batch(data, s, k, rank, a)))) / a.accum
            if recorder is not None:
                recorder.record(step.planned, s)
        if a.accum > 1:
            for p in lm.parameters():
                p.grad.div_(a.accum)
        opt.step()
        opt.zero_grad()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        if rank == 0:
            rec = {"step": s + 1, "loss": loss, "tokens_per_s": tokens_per_step / dt, "step_ms": dt * 1e3,
                   "predicted_ms": None if math.isnan(predicted_ms) else predicted_ms}
            if a.metrics:
                with open(a.metrics, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            if (s + 1) % a.log_every == 0 or s + 1 == end:
                blocks_ms = step.planned.timeline().makespan_us / 1e3   # the plan's tasks, measured
                pred = "no prediction" if math.isnan(predicted_ms) else f"{predicted_ms:.1f} ms predicted"
                print(f"step {s + 1}/{a.steps}  loss {loss:.4f}  {rec['tokens_per_s']:.0f} tok/s  "
                      f"step {dt * 1e3:.1f} ms, MoE blocks {blocks_ms:.1f} ms measured vs {pred}", flush=True)
        if a.ckpt_dir and ((s + 1) % a.ckpt_every == 0 or s + 1 == end):
            dcp.save(state(lm, opt), checkpoint_id=os.path.join(a.ckpt_dir, f"step_{s + 1}"))
    if recorder is not None:
        recorder.save(a.record_routing)
    dist.barrier()  # no rank tears the group down while a peer still uses it
    dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return errors.guarded(lambda: train(parse(argv)))


if __name__ == "__main__":
    errors.exit_now(main())  # status 0 skips interpreter finalization (gloo's exit race, executor.errors)
