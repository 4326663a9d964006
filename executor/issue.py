"""Issuing a step's tasks: every task of a :class:`executor.runtime.PlannedStep`'s plan
launched in the plan's order, on its stream (CUDA) or inline/async (CPU), into the step's
:class:`StepRecord`.

``drive(step, ctx)`` issues one step and returns its record; ``issue_cuda`` and
``issue_cpu`` launch one task, ``call`` runs its task function (:mod:`executor.tasks`,
:mod:`executor.comm_tasks`). ``step`` is the :class:`executor.runtime.PlannedStep` (not
annotated: that module imports this one), whose plan order, streams and issue thread these
functions read.

Issue. By default (``issue="single"``) this thread launches every task in plan order.
``issue="threads"`` launches compute tasks from this thread and the collectives from an
issue thread, each in plan order (so every rank issues its collectives in the same order,
from one thread); a task is launched once every predecessor on the other thread has been.
Measured on 4 x H200, the second thread makes steps slower more often than faster (the
two threads contend for the GIL and the host is the bottleneck either way), so it is an
option, not the default.

Streams. CUDA: compute tasks run on the current stream; each link resource ("comm_intra",
"comm_inter") has its own stream; a collective is issued under its link stream after that
stream waited on the events of its dependencies (NCCL's internal stream waits for the
current stream at issue), then ``work.wait()`` makes the link stream wait for completion
and an event marks the end; consumers wait on that event. A link stream thus runs its
collectives one at a time in plan order, as the simulator's serial resource. CPU/gloo:
compute runs inline; a collective is issued async (gloo progresses it on a background
thread) and consumers ``wait()`` on it. Collective start times are max(issue, end of the
previous task on the link, ends of the dependencies), the issue being an event recorded on
the link stream after its waits (GPU); ends come from CUDA events (GPU) or the Work's
completion callback (CPU). ``timeline().host`` has each task's host launch interval.
"""
from __future__ import annotations

import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from moesched.graph import COMPUTE

from executor import comm_tasks, tasks

_WARNED = False
ISSUE_MODES = ("single", "threads")


def warn_connections() -> None:
    """At the first call in the process: warn if CUDA_DEVICE_MAX_CONNECTIONS=1 (no stream overlap)."""
    global _WARNED
    if not _WARNED and os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS") == "1":
        warnings.warn("CUDA_DEVICE_MAX_CONNECTIONS=1 serialises the streams: compute and "
                      "communication will not overlap (and NCCL groups may deadlock)", RuntimeWarning, stacklevel=3)
    _WARNED = True


@dataclass
class StepRecord:
    """What one step leaves for :meth:`executor.runtime.PlannedStep.timeline`, ``routing``
    and ``last_dropped``. Host times are ``time.perf_counter()`` seconds; per-task maps are
    keyed by task name.

    ctx: the step's buffers (dropped when the next step starts, at once on CPUs).
    works: the gloo Works of each collective (CPU). start, end: each task's start and end,
    seconds after ``h0`` (CPU). sev, eev: each task's start and end CUDA events (GPU).
    host: each task's host launch, (thread, issue start, issue end, host wait seconds).
    h0: host time of the first issue; t0: CUDA event at the first issue (GPU).
    c0, c_loss, c1: host times of the call, of the loss on the host, of the call's end.
    e_call: CUDA event at the call (GPU). cnt, kept: per layer, the routing counts (host
    tensors) and the kept-copy masks of the step.
    """

    ctx: tasks.Ctx | None
    h0: float
    works: dict[str, list] = field(default_factory=dict)
    sev: dict[str, torch.cuda.Event] = field(default_factory=dict)
    eev: dict[str, torch.cuda.Event] = field(default_factory=dict)
    start: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)
    host: dict[str, tuple[str, float, float, float]] = field(default_factory=dict)
    t0: torch.cuda.Event | None = None
    expert_counts: torch.Tensor | None = None  # [layers, E] copies this rank routed to each expert
    c0: float = 0.0
    c_loss: float = 0.0
    c1: float = 0.0
    e_call: torch.cuda.Event | None = None
    cnt: list = field(default_factory=list)
    kept: list = field(default_factory=list)


def call(ctx: tasks.Ctx, name: str, a: dict) -> list:
    """Run one task; under an active torch profiler labelled ``moesched:<task>``
    (``torch.profiler.record_function``), so a user's trace shows the plan's tasks."""
    if torch.autograd.profiler._is_profiler_enabled:
        with torch.profiler.record_function(f"moesched:{name}"):
            return run_task(ctx, a)
    return run_task(ctx, a)


def run_task(ctx: tasks.Ctx, a: dict) -> list:
    kind = a["kind"]
    if a["resource"] == COMPUTE:
        tasks.COMPUTE[kind](ctx, a["layer"], a["chunk"], a["nchunks"])
        return []
    if kind == "grad_ar":
        return comm_tasks.grad_ar(ctx, a)
    return comm_tasks.A2A[kind](ctx, a["layer"], a["chunk"], a.get("hop"))


def drive(step, ctx: tasks.Ctx) -> StepRecord:
    """Issue every task of ``step``'s plan; with ``issue="threads"`` the collectives come
    from the issue thread, in plan order, and compute tasks from this one. Returns the
    step's record (events or host times, works, host issue intervals)."""
    rec = StepRecord(ctx=ctx, h0=time.perf_counter())
    if step.cuda:
        rec.t0 = torch.cuda.Event(enable_timing=True)
        rec.t0.record(step.compute_stream)
    issue = issue_cuda if step.cuda else issue_cpu
    if step.issue == "single" or not step._comm_steps:
        for st in step.steps:
            issue(step, ctx, st, rec, "main")
    else:
        two_threads(step, ctx, rec, issue)
    if step.cuda:
        for s in list(step.links.values()) + [ctx.meta_stream]:
            step.compute_stream.wait_stream(s)
    else:
        for ws in rec.works.values():
            for w in ws:
                w.wait()
    return rec


def two_threads(step, ctx: tasks.Ctx, rec: StepRecord, issue) -> None:
    """Compute tasks from this thread, collectives from the issue thread (``step._pool``,
    made at the first use), each in plan order; a task waits until every predecessor on
    the other thread has been issued. Plan order is topological, so the earliest unissued
    task can always go: no cycle. A failure on either thread releases the other, and the
    first error is raised."""
    done = {name: threading.Event() for name, _, _ in step.steps}
    errors: list[BaseException] = []

    def loop(steps: list, thread: str) -> None:
        try:
            if step.cuda:
                torch.cuda.set_device(step._device_index)
            for st in steps:
                for p in step._cross[st[0]]:
                    done[p].wait()
                    if errors:
                        return
                issue(step, ctx, st, rec, thread)
                done[st[0]].set()
        except BaseException as e:  # noqa: BLE001 - re-raised by the main thread
            errors.append(e)
            for e_ in done.values():
                e_.set()

    if step._pool is None:
        step._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moesched-issue")
    fut = step._pool.submit(loop, step._comm_steps, "comm")
    loop(step._compute_steps, "compute")
    fut.result()
    if errors:
        raise errors[0]


def issue_cuda(step, ctx: tasks.Ctx, st: tuple, rec: StepRecord, thread: str) -> None:
    """Launch one task (``st``: name, attrs, predecessors) on its stream after the events
    of its other-stream predecessors. A collective's start event fires once its
    dependencies are met and it was issued; ``work.wait()`` makes the link stream wait for
    its completion."""
    name, a, preds = st
    h, w0 = time.perf_counter(), ctx.host_wait_s
    res = a["resource"]
    s = step.compute_stream if res == COMPUTE else step.links[res]
    sev, eev = rec.sev, rec.eev
    with torch.cuda.stream(s):
        for p in preds:
            if step.graph.nodes[p]["resource"] != res:
                s.wait_event(eev[p])
        sev[name] = torch.cuda.Event(enable_timing=True)
        sev[name].record(s)
        for w in call(ctx, name, a):
            w.wait()
        eev[name] = torch.cuda.Event(enable_timing=True)
        eev[name].record(s)
    rec.host[name] = (thread, h, time.perf_counter(), ctx.host_wait_s - w0)


def issue_cpu(step, ctx: tasks.Ctx, st: tuple, rec: StepRecord, thread: str) -> None:
    """Run a compute task inline, or issue a gloo collective async, after waiting for the
    collectives it depends on. Ends of collectives come from the Work's callback."""
    name, a, preds = st
    h = time.perf_counter()
    t0, works, end = rec.h0, rec.works, rec.end
    for p in preds:
        for w in works.get(p, ()):
            w.wait()
    rec.start[name] = time.perf_counter() - t0
    ws = call(ctx, name, a)
    end[name] = time.perf_counter() - t0
    if a["resource"] != COMPUTE:
        end[name] = rec.start[name]
        for w in ws:
            w.get_future().add_done_callback(
                lambda _f, n=name: end.__setitem__(n, max(end[n], time.perf_counter() - t0)))
        works[name] = ws
    rec.host[name] = (thread, h, time.perf_counter(), 0.0)
