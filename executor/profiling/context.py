"""The profiler's process group: ranks, device, (emulated) node layout, and one group per
link scope (intra, inter, world), with the collectives the executor issues on them."""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.distributed as dist

from executor.comm import a2a, link_pg_options
from moesched.errors import MoeschedError


class Ctx:
    """The process group state: ranks, device, emulated layout, groups per scope."""

    def __init__(self, emulate_nodes: int | None) -> None:
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        self.nodes = emulate_nodes or max(1, self.world // local_world)
        if self.world % self.nodes:
            raise MoeschedError(f"--emulate-nodes {self.nodes} does not divide world size {self.world}")
        self.gpn = self.world // self.nodes
        if emulate_nodes:
            os.environ["NCCL_HOSTID"] = f"node{self.rank // self.gpn}"
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
            dist.init_process_group("nccl", device_id=self.device)
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
            dist.init_process_group("gloo")
        node = self.rank // self.gpn
        # The executor's link groups: own NCCL communicators with a high-priority stream
        # (executor.comm), so the profile times the very collectives the runtime issues.
        be = "nccl" if self.cuda else "gloo"

        def group(ranks: list[int]) -> Any:
            return dist.new_group(ranks, backend=be, pg_options=link_pg_options(be, "comm"))
        intra = [group(list(range(n * self.gpn, (n + 1) * self.gpn))) for n in range(self.nodes)]
        inter = [group([n * self.gpn + l for n in range(self.nodes)]) for l in range(self.gpn)]
        world = group(list(range(self.world)))
        if self.nodes == 1:
            self.scopes = {"intra": (world, self.world)}
        else:
            self.scopes = {"inter": (inter[self.rank % self.gpn], self.nodes), "world": (world, self.world)}
            if self.gpn > 1:
                self.scopes["intra"] = (intra[node], self.gpn)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def barrier(self) -> None:
        self.sync()
        dist.barrier()
        self.sync()

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def collective(ctx: Ctx, op: str, scope: str, nbytes: int, async_op: bool = False) -> Callable[[], Any]:
    """A closure running one collective of ``nbytes`` bytes per rank on the scope's group.
    x = bytes of each rank's buffer: the all-to-all send buffer, the all-reduce tensor, the
    gathered output of all-gather, the input of reduce-scatter."""
    group, p = ctx.scopes[scope]
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    me = dist.get_rank(group=group)
    weights = [1 + (me + j) % p for j in range(p)]  # uneven: i->j sends as many as j->i
    unit = max(1, nbytes // (dtype.itemsize * p * sum(weights)))
    n = unit * p * sum(weights)
    buf = torch.ones(n, dtype=dtype, device=ctx.device)
    out = torch.empty_like(buf)
    part = torch.empty(n // p, dtype=dtype, device=ctx.device)
    kw: dict[str, Any] = {"group": group, "async_op": async_op}
    if op in ("all_to_all", "all_to_all_uneven"):
        # the runtime's own call: executor.comm.a2a (split lists, a fresh receive buffer)
        splits = [n // p] * p if op == "all_to_all" else [w * unit * p for w in weights]
        if async_op:
            return lambda: a2a(buf, splits, splits, group, None)[1]
        return lambda: dist.all_to_all_single(out, buf, splits, splits, **kw)
    if op == "all_reduce":
        return lambda: dist.all_reduce(buf, **kw)
    if op == "all_gather":
        return lambda: dist.all_gather_into_tensor(out, part, **kw)
    if op == "reduce_scatter":
        return lambda: dist.reduce_scatter_tensor(part, buf, **kw)
    raise ValueError(op)
