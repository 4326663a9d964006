"""The plan interpreter: one training step that launches exactly the plan's tasks, in its order.

``PlannedStep(module, plan)`` then ``loss = step(batch, target)`` (batch, target [B, L, M])
runs forward, backward and the chunked gradient all-reduce; parameter gradients end in
``p.grad`` (views into the flat buffers ``step.flat["dense"|"expert"]``). ``step.timeline()``
returns the last step's measured :class:`moesched.sim.Timeline` (same columns as the
simulator: task, kind, layer, chunk, phase, rank, resource, start_us, end_us; µs from the
step's start). Its meta also times the call around the plan's tasks (µs): ``call_us`` the
whole call, ``setup_us`` from the call to the first issue (gradient buffers zeroed, layer
states reset), ``gpu_setup_us`` the same on the GPU, ``finish_us`` from the first issue
to the host holding the loss (the GPU done; on GPUs the loss already averaged over ranks,
by NCCL), ``loss_avg_us`` the rest (on CPUs the gloo average of the loss).

Issue. ``issue="single"`` (the default) launches every task from this thread, in plan
order; ``issue="threads"`` the collectives from an issue thread. How the tasks are issued
(streams, events, the two threads, the start and end times recorded): :mod:`executor.issue`.

CUDA graphs: the attention block of every piece (forward and backward) and the routing
bookkeeping of every chunk are captured once at construction and replayed
(:mod:`executor.graphs`, :mod:`executor.route`), over the step's layer states, which live as
long as the ``PlannedStep`` (reset before every step); ``MOESCHED_CUDA_GRAPHS=0`` keeps
them eager. Host index arrays reach the device through a pinned arena
(:mod:`executor.staging`).

Memory safety on CUDA: receive buffers are allocated on the link stream and recorded on the
compute stream; every buffer a link stream reads stays referenced by the step's context
until the step ends, when the compute stream waits for the link and meta streams. Host
syncs: attn_fwd starts the routing-count exchange on the meta stream and copies the counts
to pinned host memory without waiting; the first task that needs them on the host (the
chunk's dispatch, on whichever thread launches it) waits for that copy alone. The loss average ends the
step with one more sync. The gradient buffers are zeroed on a side stream beside the
forward; the loss task (before any gradient is written) waits for it.
"""
from __future__ import annotations

import gc
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import torch
import torch.distributed as dist

from moesched.errors import MoeschedError
from moesched.graph import COMPUTE
from moesched.plan import Plan
from moesched.sim import COLUMNS, HOST_COLUMNS, Timeline

from executor import graphs, route, routers, tasks
from executor.comm import build_groups
from executor.issue import ISSUE_MODES, StepRecord, drive, warn_connections
from executor.layers import MoEModule
from executor.staging import Staging

class PlannedStep:
    """Run training steps of ``module`` by the plan (see the module docstring).

    module: the rank's :class:`executor.layers.MoEModule` (ep = plan.cluster.ep_size,
    ep_rank = rank % ep). group: None (the default world group; reserved). issue: "single"
    or "threads" (module docstring). cuda_graphs: False keeps the attention block eager even
    on CUDA (graphs are on there unless ``MOESCHED_CUDA_GRAPHS=0``).
    """

    def __init__(self, module: MoEModule, plan: Plan, group: object = None, timeout_s: float = 120.0,
                 issue: str = "single", cuda_graphs: bool = True):
        if issue not in ISSUE_MODES:
            raise MoeschedError(f"issue must be one of {ISSUE_MODES}, got {issue!r}")
        if plan.model.router == "expert_choice" and plan.knobs.at_chunked:
            raise MoeschedError("expert_choice routing needs at_chunked false: an expert chooses among all of a "
                                "rank's tokens, so attention cannot be split into chunks that route on their own")
        if not dist.is_initialized():
            raise MoeschedError("PlannedStep needs torch.distributed to be initialised")
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        c = plan.cluster
        if world != c.world:
            raise MoeschedError(f"the plan is for {c.world} ranks ({c.nodes}x{c.gpus_per_node}) but the group has "
                                f"{world}; start the job with torchrun {c.torchrun_flags()}")
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
        self.issue = issue
        self._compute_steps = [st for st in self.steps if st[1]["resource"] == COMPUTE]
        self._comm_steps = [st for st in self.steps if st[1]["resource"] != COMPUTE]
        on_comm = lambda t: g.nodes[t]["resource"] != COMPUTE  # noqa: E731
        self._cross = {t: [p for p in preds if on_comm(p) != on_comm(t)] for t, _, preds in self.steps}
        self._pool: ThreadPoolExecutor | None = None
        m = plan.model
        self.layers = tasks.new_layer_states(m, plan.knobs, c.ep_size, module.device, module.dtype)  # every step's
        self.compute_stream = self.meta_stream = self.graphs = self.route_graphs = self.staging = None
        if self.cuda:
            warn_connections()
            self.compute_stream = torch.cuda.current_stream(module.device)
            self._device_index = self.compute_stream.device.index  # for the issue thread
            # graphed pieces keep no router outputs (auxiliary losses) and have k = top_k slots
            eager = routers.has_aux(m) or m.router == "expert_choice"
            cuda_graphs = cuda_graphs and not m.dense_layers  # dense layers run eager (not captured)
            self.graphs = graphs.capture(module, plan.knobs, self.layers) if cuda_graphs and not eager else None
            self.route_graphs = route.capture(self.layers, m, plan.knobs) if cuda_graphs and not eager else None
            self.staging = Staging(module.device)
            self.links = {r: torch.cuda.Stream(module.device) for r in ("comm_intra", "comm_inter")}
            self.meta_stream = torch.cuda.Stream(module.device)  # routing-count exchange
            self.zero_stream = torch.cuda.Stream(module.device)  # gradient buffers zeroed beside the forward
            self._warm_groups()
        self._last: StepRecord | None = None
        # a language model's hooks (executor.lm): the loss task calls head(y, world) -> (loss,
        # dy) instead of the MSE on target; input_grad [T, M] receives dL/d(batch)
        self.head = None
        self.input_grad: torch.Tensor | None = None

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
        zeroed = None
        if self.cuda:  # zero the gradient buffers beside the forward; the loss task waits for it
            self.zero_stream.wait_stream(self.compute_stream)
            with torch.cuda.stream(self.zero_stream):
                for f in self.flat.values():
                    f.zero_()
                zeroed = torch.cuda.Event()
                zeroed.record(self.zero_stream)
        else:
            for f in self.flat.values():
                f.zero_()
        for ls in self.layers:  # the last step is over (its loss is on the host)
            ls.reset()
        if self.staging is not None:
            self.staging.reset()
        flat = lambda t: t.to(mod.device, mod.dtype).reshape(m.tokens, m.d_model)  # noqa: E731
        return tasks.Ctx(module=mod, cfg=m, knobs=self.plan.knobs, groups=self.groups, world=self.world,
                         layers=self.layers, x=flat(batch), target=target if self.head is not None else flat(target),
                         flat=self.flat, head=self.head, dx=self.input_grad,
                         compute_stream=self.compute_stream, meta_stream=self.meta_stream, graphs=self.graphs,
                         route_graphs=self.route_graphs, staging=self.staging, grads_zeroed=zeroed)

    def __call__(self, batch: torch.Tensor, target: torch.Tensor) -> float:
        """One training step; returns the loss averaged over ranks. Python's automatic
        garbage collection is paused during the step (a collection would stall the issue
        of every task behind it) and restored after it: collections run between steps."""
        was = gc.isenabled()
        gc.disable()
        try:
            return self._step(batch, target)
        finally:
            if was:
                gc.enable()

    def _step(self, batch: torch.Tensor, target: torch.Tensor) -> float:
        c0 = time.perf_counter()
        if self._last is not None:
            self._last.ctx = None  # free the previous step's buffers before allocating new ones
        e_call = None
        if self.cuda:
            e_call = torch.cuda.Event(enable_timing=True)
            e_call.record(self.compute_stream)
        ctx = self._ctx(batch, target)
        self._last = rec = drive(self, ctx)
        rec.c0, rec.e_call = c0, e_call
        rec.cnt = [ls.cnt for ls in ctx.layers]  # host tensors: the step's routing (routing())
        rec.kept = [ls.kept for ls in ctx.layers]  # read by last_dropped (no sync in the step)
        ec = self.plan.model.router == "expert_choice"  # its slots are every expert: count the chosen ones
        rec.expert_counts = routers.expert_counts([None if ls.dense else ls.idx for ls in ctx.layers],
                                                  self.plan.model.experts,
                                                  [ls.kept for ls in ctx.layers] if ec else None)
        if self.cuda:  # averaged on the GPU (NCCL, dense group = every rank), read once
            loss = ctx.loss.detach().float().reshape(1)
            dist.all_reduce(loss, group=self.groups.dense)
            loss = loss.cpu()
            rec.c_loss = time.perf_counter()
        else:
            loss = ctx.loss.detach().float().cpu().reshape(1)
            rec.c_loss = time.perf_counter()  # the step's work is done
            dist.all_reduce(loss, group=self.groups.world_meta)
        if self.plan.model.router == "deepseek_v3":
            self._update_bias(rec.expert_counts)
        if not self.cuda:
            rec.ctx = None
        rec.c1 = time.perf_counter()
        return float(loss) / self.world

    def _update_bias(self, counts: torch.Tensor) -> None:
        """deepseek_v3: every block's selection bias from the step's load over all ranks
        (:func:`executor.routers.update_bias`)."""
        load = counts.clone()
        dist.all_reduce(load, group=self.groups.dense)
        for blk, ld in zip(self.module.blocks, load):
            if not blk.dense:
                routers.update_bias(blk.e_bias, ld, self.plan.model.bias_update_rate)

    def expert_counts(self) -> torch.Tensor:
        """The last step's copies routed by this rank's tokens to each expert, before capacity:
        [layers, E] int64 on the module's device (what a routing trace records)."""
        if self._last is None:
            raise MoeschedError("no step has run yet")
        return self._last.expert_counts

    @property
    def last_dropped(self) -> int:
        """Expert copies over capacity in the last step, all layers of this rank."""
        if self._last is None:
            raise MoeschedError("no step has run yet")
        return int(sum(int((~k).sum()) for k in self._last.kept))

    def routing(self) -> list[list[list[int]]]:
        """The last step's routing: per layer, copies[src][dst] that EP rank src sent to the
        experts of EP rank dst, over all chunks (the count exchange gives every rank the
        whole matrix; :class:`moesched.routing.Routing`)."""
        if self._last is None:
            raise MoeschedError("no step has run yet")
        return [sum(c.sum((2, 3)) for c in cnt if c is not None).tolist() for cnt in self._last.cnt]

    # ---- measured timeline ---------------------------------------------------------------
    def timeline(self) -> Timeline:
        """The last step's measured timeline of this rank (synchronises the GPU)."""
        if self._last is None:
            raise MoeschedError("no step has run yet")
        rec = self._last
        if self.cuda:
            torch.cuda.synchronize(self.module.device)
            t0 = rec.t0
            end = {t: t0.elapsed_time(e) * 1e3 for t, e in rec.eev.items()}
            start = {t: t0.elapsed_time(e) * 1e3 for t, e in rec.sev.items()}
        else:
            start = {t: s * 1e6 for t, s in rec.start.items()}
            end = {t: s * 1e6 for t, s in rec.end.items()}
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
        h0 = rec.h0
        host = pd.DataFrame.from_records(
            [(t, self.rank, th, (a - h0) * 1e6, (b - h0) * 1e6, w * 1e6) for t, (th, a, b, w) in rec.host.items()],
            columns=HOST_COLUMNS)
        meta = {"ranks": 1, "measured": True, "device": str(self.module.device), "issue": self.issue,
                "call_us": (rec.c1 - rec.c0) * 1e6, "setup_us": (h0 - rec.c0) * 1e6,
                "finish_us": (rec.c_loss - h0) * 1e6, "loss_avg_us": (rec.c1 - rec.c_loss) * 1e6}
        if self.cuda:  # GPU time from the call to the first task: the gradient buffers' zeroing
            meta["gpu_setup_us"] = rec.e_call.elapsed_time(rec.t0) * 1e3
        return Timeline(df, meta, host=host)
