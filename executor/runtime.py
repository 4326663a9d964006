"""The plan interpreter: one training step that launches exactly the plan's tasks, in its order.

``PlannedStep(module, plan)`` then ``loss = step(batch, target)`` (batch, target [B, L, M])
runs forward, backward and the chunked gradient all-reduce; parameter gradients end in
``p.grad`` (views into the flat buffers ``step.flat["dense"|"expert"]``). ``step.timeline()``
returns the last step's measured :class:`moesched.sim.Timeline` (same columns as the
simulator: task, kind, layer, chunk, phase, rank, resource, start_us, end_us; µs from the
step's start).

Streams and ordering. Tasks are launched from one thread in plan order. CUDA: compute tasks
run on the current stream; each link resource ("comm_intra", "comm_inter") has its own
stream; a collective is issued under its link stream after that stream waited on the
events of its dependencies (NCCL's internal stream waits for the current stream at issue),
then ``work.wait()`` makes the link stream wait for completion and an event marks the end;
consumers wait on that event. A link stream thus runs its collectives one at a time in plan
order, as the simulator's serial resource. CPU/gloo: compute runs inline; a collective is
issued async (gloo progresses it on a background thread) and consumers ``wait()`` on it.
Collective start times are max(issue, end of the previous task on the link, ends of the
dependencies), the issue being an event recorded on the link stream after its waits (GPU);
ends come from CUDA events (GPU) or the Work's completion callback (CPU).

Memory safety on CUDA: receive buffers are allocated on the link stream and recorded on the
compute stream; every buffer a link stream reads stays referenced by the step's context
until the step ends, when the compute stream waits for both link streams. Host syncs:
attn_fwd copies the routing counts to the host and all-gathers them (gloo), so the CPU
cannot run ahead of the GPU past an attn_fwd; the loss average ends the step with one more.
"""
from __future__ import annotations

import os
import time
import warnings

import pandas as pd
import torch
import torch.distributed as dist

from moesched.errors import MoeschedError
from moesched.graph import COMPUTE
from moesched.plan import Plan
from moesched.sim import COLUMNS, Timeline

from executor import tasks
from executor.comm import build_groups
from executor.layers import MoEModule

_WARNED = False


def _warn_connections() -> None:
    global _WARNED
    if not _WARNED and os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS") == "1":
        warnings.warn("CUDA_DEVICE_MAX_CONNECTIONS=1 serialises the streams: compute and "
                      "communication will not overlap (and NCCL groups may deadlock)", RuntimeWarning, stacklevel=3)
    _WARNED = True


class PlannedStep:
    """Run training steps of ``module`` by the plan (see the module docstring).

    module: the rank's :class:`executor.layers.MoEModule` (ep = plan.cluster.ep_size,
    ep_rank = rank % ep). group: None (the default world group; reserved).
    """

    def __init__(self, module: MoEModule, plan: Plan, group: object = None, timeout_s: float = 120.0):
        if not dist.is_initialized():
            raise MoeschedError("PlannedStep needs torch.distributed to be initialised")
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        c = plan.cluster
        if world != c.world:
            raise MoeschedError(f"plan is for {c.world} ranks but the world has {world}")
        if module.cfg != plan.model:
            raise MoeschedError("the module's model differs from the plan's model")
        if (module.ep, module.ep_rank) != (c.ep_size, rank % c.ep_size):
            raise MoeschedError(f"module holds experts for ep={module.ep} rank {module.ep_rank}; "
                                f"plan needs ep={c.ep_size} rank {rank % c.ep_size}")
        self.module, self.plan, self.rank, self.world = module, plan, rank, world
        self.graph = g = plan.validate()
        self.cuda = module.device.type == "cuda"
        self.groups = build_groups(c, plan.knobs, "nccl" if self.cuda else "gloo", timeout_s)
        self.flat = tasks.grad_buffers(module)
        self._views = {id(p): p.grad for blk in module.blocks for p in blk.dense_params() + blk.expert_params()}
        self.steps = []  # (name, attrs, preds) in plan order
        for t in plan.order:
            self.steps.append((t, g.nodes[t], list(g.predecessors(t))))
        self.compute_stream = None
        if self.cuda:
            _warn_connections()
            self.compute_stream = torch.cuda.current_stream(module.device)
            self.links = {r: torch.cuda.Stream(module.device) for r in ("comm_intra", "comm_inter")}
            self._warm_groups()
        self._last: dict | None = None

    def _warm_groups(self) -> None:
        """Create the NCCL communicators now (one tiny all-reduce per group, same order on
        every rank), not lazily inside the first step."""
        g = self.groups
        seen: list = []
        for pg in (g.ep, g.meta, g.dense, g.expert, g.intra, g.inter):
            if pg is not None and not any(pg is q for q in seen):
                seen.append(pg)
                dist.all_reduce(torch.zeros(1, device=self.module.device), group=pg)
        torch.cuda.synchronize(self.module.device)

    # ---- one step ------------------------------------------------------------------------
    def _ctx(self, batch: torch.Tensor, target: torch.Tensor) -> tasks.Ctx:
        m, mod = self.plan.model, self.module
        for blk in mod.blocks:
            for p in blk.dense_params() + blk.expert_params():
                if p.grad is None or p.grad.data_ptr() != self._views[id(p)].data_ptr():
                    p.grad = self._views[id(p)]
        for f in self.flat.values():
            f.zero_()
        flat = lambda t: t.to(mod.device, mod.dtype).reshape(m.tokens, m.d_model)  # noqa: E731
        return tasks.Ctx(module=mod, cfg=m, knobs=self.plan.knobs, groups=self.groups, world=self.world,
                         layers=tasks.new_layer_states(m, self.plan.knobs, self.groups.ep_size, mod.device, mod.dtype),
                         x=flat(batch), target=flat(target), flat=self.flat, compute_stream=self.compute_stream)

    def __call__(self, batch: torch.Tensor, target: torch.Tensor) -> float:
        """One training step; returns the loss averaged over ranks."""
        if self._last is not None:
            self._last.pop("ctx", None)  # free the previous step's buffers before allocating new ones
        ctx = self._ctx(batch, target)
        if self.cuda:
            rec = self._run_cuda(ctx)
        else:
            rec = self._run_cpu(ctx)
        self._last = rec
        self.last_dropped = int(sum(int((~ls.kept).sum()) for ls in ctx.layers))  # copies over capacity
        loss = ctx.loss.detach().float().cpu().reshape(1)
        dist.all_reduce(loss, group=self.groups.world_meta)
        return float(loss) / self.world

    @staticmethod
    def _call(ctx: tasks.Ctx, name: str, a: dict) -> list:
        kind = a["kind"]
        if a["resource"] == COMPUTE:
            tasks.COMPUTE[kind](ctx, a["layer"], a["chunk"], a["nchunks"])
            return []
        if kind == "grad_ar":
            return tasks.grad_ar(ctx, a)
        return tasks.A2A[kind](ctx, a["layer"], a["chunk"], a.get("hop"))

    def _run_cpu(self, ctx: tasks.Ctx) -> dict:
        t0 = time.perf_counter()
        works: dict[str, list] = {}
        waited: set[str] = set()
        start, end = {}, {}

        def wait(t: str) -> None:
            if t not in waited:
                for w in works[t]:
                    w.wait()
                waited.add(t)

        for name, a, preds in self.steps:
            for p in preds:
                if p in works:
                    wait(p)
            start[name] = time.perf_counter() - t0
            ws = self._call(ctx, name, a)
            if a["resource"] == COMPUTE:
                end[name] = time.perf_counter() - t0
                continue
            works[name] = ws
            end[name] = start[name]
            for w in ws:
                w.get_future().add_done_callback(
                    lambda _f, n=name: end.__setitem__(n, max(end[n], time.perf_counter() - t0)))
        for t in works:
            wait(t)
        return {"start": start, "end": end}

    def _run_cuda(self, ctx: tasks.Ctx) -> dict:
        cs = self.compute_stream
        ev = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
        t0 = ev()
        t0.record(cs)
        sev, eev = {}, {}
        for name, a, preds in self.steps:
            res = a["resource"]
            if res == COMPUTE:
                with torch.cuda.stream(cs):
                    for p in preds:
                        if self.graph.nodes[p]["resource"] != COMPUTE:
                            cs.wait_event(eev[p])
                    sev[name] = ev()
                    sev[name].record(cs)
                    self._call(ctx, name, a)
                    eev[name] = ev()
                    eev[name].record(cs)
            else:
                ls = self.links[res]
                with torch.cuda.stream(ls):
                    for p in preds:
                        if self.graph.nodes[p]["resource"] != res:
                            ls.wait_event(eev[p])
                    sev[name] = ev()  # fires once dependencies are met AND the CPU has issued it
                    sev[name].record(ls)
                    for w in self._call(ctx, name, a):
                        w.wait()
                    eev[name] = ev()
                    eev[name].record(ls)
        for s in self.links.values():
            cs.wait_stream(s)
        return {"t0": t0, "sev": sev, "eev": eev, "ctx": ctx}

    # ---- measured timeline ---------------------------------------------------------------
    def timeline(self) -> Timeline:
        """The last step's measured timeline of this rank (synchronises the GPU)."""
        if self._last is None:
            raise MoeschedError("no step has run yet")
        rec = self._last
        if self.cuda:
            torch.cuda.synchronize(self.module.device)
            t0 = rec["t0"]
            end = {t: t0.elapsed_time(e) * 1e3 for t, e in rec["eev"].items()}
            start = {t: t0.elapsed_time(e) * 1e3 for t, e in rec["sev"].items()}
        else:
            start = {t: s * 1e6 for t, s in rec["start"].items()}
            end = {t: s * 1e6 for t, s in rec["end"].items()}
        link_end: dict[str, float] = {}
        rows = []
        for name, a, preds in self.steps:
            res = a["resource"]
            if res != COMPUTE:
                s = max([start.get(name, 0.0), link_end.get(res, 0.0)] + [end[p] for p in preds])
                start[name] = s
                end[name] = max(end[name], s)
                link_end[res] = end[name]
            rows.append((name, a["kind"], a["layer"], a["chunk"], a["phase"], self.rank, res, start[name], end[name]))
        df = pd.DataFrame.from_records(rows, columns=COLUMNS)
        return Timeline(df, {"ranks": 1, "measured": True, "device": str(self.module.device)})
