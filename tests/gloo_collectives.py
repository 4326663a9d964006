"""Times gloo all-reduce and all-to-all on CPU with P processes (torch.multiprocessing).

``measure(P)`` returns {op: [(bytes per rank, median µs), ...]} for :data:`SIZES`; used by
tests/test_cluster_scale.py to calibrate the cluster model at 2 ranks and check it at 4.
"""
from __future__ import annotations

import os
import socket
import statistics
import time

SIZES = (1 << 20, 1 << 22, 1 << 24)
REPS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: "object") -> None:
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    res: dict[str, list[tuple[int, float]]] = {"all_reduce": [], "all_to_all": []}
    for n in SIZES:
        x = torch.ones(n // 4, dtype=torch.float32)
        y = torch.empty_like(x)
        for op in res:
            ts = []
            for i in range(REPS + 2):
                dist.barrier()
                t0 = time.perf_counter()
                if op == "all_reduce":
                    dist.all_reduce(x)
                else:
                    dist.all_to_all_single(y, x)
                ts.append(time.perf_counter() - t0)
            res[op].append((n, statistics.median(ts[2:]) * 1e6))
    if rank == 0:
        out.put(res)  # type: ignore[attr-defined]
    dist.destroy_process_group()


def measure(world: int) -> dict[str, list[tuple[int, float]]]:
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(world, _free_port(), q), nprocs=world, join=True, start_method="spawn")
    return q.get()
