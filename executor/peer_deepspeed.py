"""DeepSpeed-MoE as a peer: the same block shapes, DeepSpeed's own MoE layer.

Run under torchrun on the GPU machine (DeepSpeed carried as wheels, C++ ops unbuilt)::

    torchrun --nproc_per_node=4 -m executor.peer_deepspeed --configs docs/validation_configs.json \
        --regime nvlink --out results/ds.csv

Each block is x + Attn(Norm(x)) then h + MoE(Norm(h)) with ``deepspeed.moe.layer.MoE``
(top-k gating as DeepSpeed implements it, capacity factor, expert parallelism over the
world, its synchronous all-to-alls). Gradients of non-expert parameters are all-reduced
after backward in one flat bucket, as DeepSpeed's engine does without overlap. The step
time is the median over timed steps (CUDA-synchronised wall clock).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from executor.profiling.timing import gc_quiet
from moesched.configs import load_configs
from moesched.models import MoEModel


class _FFN(nn.Module):
    def __init__(self, m: MoEModel):
        super().__init__()
        self.swiglu = m.expert_kind == "swiglu"
        self.w1 = nn.Linear(m.d_model, m.ffn_hidden, bias=False)
        self.w2 = nn.Linear(m.ffn_hidden, m.d_model, bias=False)
        self.w3 = nn.Linear(m.d_model, m.ffn_hidden, bias=False) if self.swiglu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.gelu(self.w1(x)))


class _Block(nn.Module):
    def __init__(self, m: MoEModel, world: int):
        super().__init__()
        from deepspeed.moe.layer import MoE
        self.m = m
        self.n1 = nn.RMSNorm(m.d_model)
        self.n2 = nn.RMSNorm(m.d_model)
        self.qkv = nn.Linear(m.d_model, 3 * m.d_model, bias=False)
        self.o = nn.Linear(m.d_model, m.d_model, bias=False)
        cf = m.capacity_factor
        self.moe = MoE(hidden_size=m.d_model, expert=_FFN(m), num_experts=m.experts, ep_size=world, k=m.top_k,
                       capacity_factor=cf or 1.0, eval_capacity_factor=cf or 1.0, min_capacity=4,
                       drop_tokens=cf is not None, use_rts=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, s, 3, self.m.heads, d // self.m.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, d)
        h = x + self.o(a)
        y, _, _ = self.moe(self.n2(h))
        return h + y


def run_config(m: MoEModel, steps: int, warmup: int, device: torch.device, dtype: torch.dtype) -> float:
    """Median step time in ms of fwd + bwd + gradient all-reduce for model ``m``."""
    world = dist.get_world_size()
    blocks = nn.Sequential(*[_Block(m, world) for _ in range(m.layers)]).to(device=device, dtype=dtype)
    for blk in blocks:
        blk.moe.set_deepspeed_parallelism()
    dense = [p for n, p in blocks.named_parameters() if ".deepspeed_experts." not in n]
    x = torch.randn(m.micro_batch, m.seq_len, m.d_model, device=device, dtype=dtype)
    times = []
    with gc_quiet():  # as moesched's own steps are timed (executor.profiling.timing.gc_quiet)
        for i in range(warmup + steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            blocks.zero_grad(set_to_none=True)
            loss = blocks(x).float().pow(2).mean()
            loss.backward()
            flat = torch.cat([p.grad.reshape(-1) for p in dense])
            dist.all_reduce(flat)
            torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    del blocks
    torch.cuda.empty_cache()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="executor.peer_deepspeed", description=__doc__.splitlines()[0])
    ap.add_argument("--configs", required=True, help="JSON list of {name, model: {MoEModel fields}}")
    ap.add_argument("--regime", required=True, help="label of the network regime this run is in")
    ap.add_argument("--out", required=True, help="CSV to append rows to (rank 0)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--emulate-nodes", type=int, default=None, metavar="K", help="pose as K nodes (NCCL_HOSTID)")
    args = ap.parse_args(argv)
    if args.emulate_nodes:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        os.environ["NCCL_HOSTID"] = f"node{rank // (world // args.emulate_nodes)}"
    for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"):
        os.environ.setdefault(k, "0" if k == "NCCL_NVLS_ENABLE" else "1")
    import deepspeed
    deepspeed.init_distributed(dist_backend="nccl")
    rank = dist.get_rank()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device("cuda")
    rows = []
    for c in load_configs(args.configs):
        m = c.model
        try:
            ms = run_config(m, args.steps, args.warmup, device, torch.bfloat16)
            err = ""
        except Exception as e:  # a peer failure is reported, not fatal to the batch
            ms, err = float("nan"), f"{type(e).__name__}: {e}".splitlines()[0][:200]
        if rank == 0:
            print(f"deepspeed {c.name} {args.regime}: {ms:.2f} ms {err}", flush=True)
            rows.append(f"{c.name},{args.regime},deepspeed,{ms:.4f},{deepspeed.__version__},\"{err}\"\n")
    if rank == 0:
        new = not os.path.exists(args.out)
        with open(args.out, "a") as f:
            if new:
                f.write("config,regime,system,step_ms,version,error\n")
            f.writelines(rows)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
