"""Which way of timing an all-to-all matches what the executor sees? Four methods on the
executor's kind of group (NCCL, high-priority stream), per message size. Usage (device tool):
``torchrun --nproc_per_node=4 scripts/gpu_a2a_diag.py`` (under NCCL_P2P_DISABLE=1 for host memory).
(a) back to back, synchronous, one barrier first (the profiler until now); (b) one op per rep
after a barrier; (c) the executor's a2a() from a link stream, fresh receive buffer, barrier
per rep; (d) as (c), back to back. Prints the slowest rank's median µs per method.
"""
import os
import statistics

import torch
import torch.distributed as dist

from executor.comm import a2a, link_pg_options

MB = 2**20


def main() -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", rank))
    g = dist.new_group(list(range(world)), pg_options=link_pg_options("nccl", "comm"))
    link = torch.cuda.Stream()
    for mb in (2, 8, 26, 64):
        rows = mb * MB // 2 // 1600 // world * world
        buf = torch.ones(rows, 1600, dtype=torch.bfloat16, device="cuda")
        out = torch.empty_like(buf)
        sp = [rows // world] * world
        res = {}
        # (a)
        dist.barrier(); torch.cuda.synchronize()
        for _ in range(2):
            dist.all_to_all_single(out, buf, sp, sp, group=g)
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(8)]
        ev[0].record()
        for i in range(7):
            dist.all_to_all_single(out, buf, sp, sp, group=g)
            ev[i + 1].record()
        ev[-1].synchronize()
        res["a_b2b"] = statistics.median(1000 * ev[i].elapsed_time(ev[i + 1]) for i in range(7))
        # (b)
        ts = []
        for _ in range(7):
            torch.cuda.synchronize(); dist.barrier(); torch.cuda.synchronize()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record(); dist.all_to_all_single(out, buf, sp, sp, group=g); e1.record(); e1.synchronize()
            ts.append(1000 * e0.elapsed_time(e1))
        res["b_barrier"] = statistics.median(ts)
        # (c), (d)
        for name, per_rep in (("c_exec_barrier", True), ("d_exec_b2b", False)):
            ts = []
            torch.cuda.synchronize(); dist.barrier()
            for _ in range(7):
                if per_rep:
                    torch.cuda.synchronize(); dist.barrier(); torch.cuda.synchronize()
                with torch.cuda.stream(link):
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    recv, w = a2a(buf, sp, sp, g, torch.cuda.current_stream())
                    w.wait()
                    e1.record()
                ts.append((e0, e1))
            torch.cuda.synchronize()
            res[name] = statistics.median(1000 * a.elapsed_time(b) for a, b in ts)
        allres = [None] * world
        dist.all_gather_object(allres, res)
        if rank == 0:
            print(f"{mb:3d} MB " + "  ".join(f"{k} {max(r[k] for r in allres):8.1f}" for k in res), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
