"""Timing primitives of the profiler: CUDA events on GPU, ``perf_counter`` on CPU.

``ctx`` is anything with ``cuda``, ``sync()`` and ``barrier()`` (:class:`Ranks`; the
profiler's :class:`executor.profiling.context.Ctx`). Every function returns µs.

* :func:`time_us`: a closure's median time. Compute is timed as GPU time alone (a spin
  kernel puts the host ahead); collectives with one barrier first.
* :func:`time_isolated_us`: a collective issued alone after a barrier, as the runtime does.
* :func:`together`: compute and a collective on two streams at once (interference).
* :func:`gc_quiet`: the garbage collector kept out of a loop of timed steps.
* :func:`median_event_us`: one process, no group: a closure's median time on a device
  (the benchmark scripts' timer).
"""
from __future__ import annotations

import gc
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import torch


class Ranks(Protocol):
    """What the timing functions need of the process group: whether it runs on CUDA, a
    device synchronisation and a barrier of every rank."""

    cuda: bool

    def sync(self) -> None: ...

    def barrier(self) -> None: ...


@contextmanager
def gc_quiet() -> Iterator[None]:
    """Keep Python's cyclic garbage collector out of the steps timed inside, as training
    frameworks do (Megatron-LM's ``--manual-gc``, torchtitan's GC control): what exists on
    entry is collected once and frozen, automatic collection is off inside, and on exit
    the objects are unfrozen, the collector restored and run once. A full collection in a
    process holding torch scans some 200,000 objects (130 ms on the CI machine), longer
    than a whole step. (On 2 x H200 it did not explain the spread between repeats of
    host-bound plans over NVLink, which stayed 10-14%: docs/validating.md.)"""
    was = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was:
            gc.enable()
        gc.collect()


def loop(fn: Callable[[], Any], n: int) -> Callable[[], Any]:
    return lambda: [fn() for _ in range(n)]


def _gpu_sleep(us: float) -> None:
    """Queue a spin kernel of about ``us`` µs on the current stream (``torch.cuda._sleep``
    counts cycles: the cycles per µs are measured once per process)."""
    global _CYCLES_PER_US
    if _CYCLES_PER_US is None:
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1000)  # warm the kernel up
        e0.record()
        torch.cuda._sleep(2_000_000)
        e1.record()
        e1.synchronize()
        _CYCLES_PER_US = 2_000_000 / max(1.0, 1000.0 * e0.elapsed_time(e1))
    torch.cuda._sleep(int(us * _CYCLES_PER_US))


_CYCLES_PER_US: float | None = None
#: Cap of the spin kernel that puts the host ahead of the GPU before timed reps, µs.
MAX_AHEAD_US = 200_000.0


def time_us(ctx: Ranks, fn: Callable[[], Any], reps: int, warmup: int, barrier: bool = False, inner: int = 1) -> float:
    """Median µs of ``reps`` calls of ``fn`` after ``warmup`` calls, each rep ``inner`` calls
    back to back (divided). GPU: CUDA events between consecutive reps. A collective
    (``barrier``) gets one barrier before its warm-up: after it the collectives themselves
    keep the ranks in step, so rank skew at a barrier never lands in a timed rep (timing each
    rep after its own barrier made large messages noisy).

    Compute (no ``barrier``) on GPU is timed as GPU time alone: a spin kernel longer than
    the host takes to issue every rep goes first, so the reps run back to back on the GPU
    however slowly the host issues them. The executor is host-bound at small token counts,
    and its host issue cost is a separate model (:mod:`moesched.host`), so a compute cost
    that also held the host's time would count it twice. A task that synchronises the host
    inside falls back to host-bound timing (the spin only delays it)."""
    if inner > 1:
        fn = loop(fn, inner)
    if barrier:
        ctx.barrier()
    h0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    host_us = 1e6 * (time.perf_counter() - h0) / max(1, warmup)  # >= GPU time: warm-ups are not ahead
    ctx.sync()
    times = []
    if ctx.cuda:
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
        if not barrier and hasattr(torch.cuda, "_sleep"):
            _gpu_sleep(min(MAX_AHEAD_US, 1.5 * host_us * reps + 1000.0))
        ev[0].record()
        for i in range(reps):
            fn()
            ev[i + 1].record()
        ev[-1].synchronize()
        times = [1000.0 * ev[i].elapsed_time(ev[i + 1]) for i in range(reps)]
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(1e6 * (time.perf_counter() - t0))
    return statistics.median(times) / inner


def time_isolated_us(ctx: Ranks, issue: Callable[[], Any], reps: int, warmup: int) -> list[float]:
    """µs of each of ``reps`` collectives on this rank, each issued alone as the runtime
    issues one: all ranks synchronised and at a barrier first, then ``issue()`` (async,
    returns the Work) on a link stream, timed by CUDA events on that stream around the issue
    and the wait.

    Collectives timed back to back pipeline their launch and handshake with the previous
    one: on NVLink a 26 MB all-to-all took 95 µs back to back and 245 µs alone, and alone is
    how the executor runs it. CPU: perf_counter around the
    issue and the wait. A rank's time includes its wait for ranks that left the barrier
    later: :func:`measure_comm` keeps the last one's (the smallest)."""
    link = torch.cuda.Stream() if ctx.cuda else None
    times = []
    for i in range(warmup + reps):
        ctx.barrier()
        if link is None:
            t0 = time.perf_counter()
            issue().wait()
            t = 1e6 * (time.perf_counter() - t0)
        else:
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(link):
                e0.record()
                issue().wait()
                e1.record()
            e1.synchronize()
            t = 1000.0 * e0.elapsed_time(e1)
        if i >= warmup:
            times.append(t)
    return times


def together(ctx: Ranks, comp: Callable[[], Any], n_comp: int, comm: Callable[[], Any], n_comm: int,
              measure: str) -> float:
    """µs of the compute loop (measure="compute") or the comm loop (measure="comm") while
    the other runs: CUDA streams on GPU, gloo async work beside the main thread on CPU."""
    ctx.barrier()
    if ctx.cuda:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        with torch.cuda.stream(side):
            ev[0].record()
            for _ in range(n_comm):
                comm().wait()
            ev[1].record()
        ev[2].record()
        loop(comp, n_comp)()
        ev[3].record()
        ctx.sync()
        return 1000.0 * (ev[0].elapsed_time(ev[1]) if measure == "comm" else ev[2].elapsed_time(ev[3]))
    t0 = time.perf_counter()
    works = [comm() for _ in range(n_comm)]
    comm_end = None
    for _ in range(n_comp):
        comp()
        if comm_end is None and works[-1].is_completed():
            comm_end = time.perf_counter()
    comp_end = time.perf_counter()
    for w in works:
        w.wait()
    comm_end = comm_end or time.perf_counter()
    return 1e6 * ((comm_end if measure == "comm" else comp_end) - t0)


def host_probe_us(device: torch.device, n: int = 300, reps: int = 7) -> float:
    """Host µs per iteration of a fixed loop of the executor's kind of host work (an add and
    an index_select on small device tensors, and an event record on CUDA), median of
    ``reps`` runs. The GPU keeps up with it (tiny kernels), so this prices the host alone.

    The same executor code can take 1.5-2x longer per host operation in one process than in
    another (on 1 x H200, ``Event.record`` took 4.1 µs in one and 8.4 µs in another). Scaling
    the host model by this probe's ratio (taken when profiling and again before a
    measurement) did not follow the measured steps (on 1 x H200, 32 plans: 6.3 against 4.3%
    mean error), so ``validate`` reports it as a diagnostic only."""
    cuda = device.type == "cuda"
    x = torch.zeros(256, device=device)
    i = torch.zeros(16, dtype=torch.long, device=device)
    ev = torch.cuda.Event() if cuda else None
    out = []
    for _ in range(reps + 1):
        if cuda:
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for _ in range(n):
            (x + 1).index_select(0, i)
            if ev is not None:
                ev.record()
        out.append((time.perf_counter() - t) / n * 1e6)
    if cuda:
        torch.cuda.synchronize(device)
    return round(statistics.median(out[1:]), 3)


@dataclass(frozen=True)
class CpuSample:
    """Jiffies of this process's CPUs (``os.sched_getaffinity``) from /proc/stat: stolen by
    the hypervisor, busy (user, nice, system, irq, softirq) and in all; and this process's own
    CPU seconds (``time.process_time``, every thread)."""

    steal: int
    busy: int
    total: int
    own_s: float


def cpu_sample() -> CpuSample | None:
    """The CPUs' counters now; None where /proc/stat or the affinity cannot be read (not Linux)."""
    try:
        cpus = {f"cpu{c}" for c in os.sched_getaffinity(0)}
        with open("/proc/stat") as f:
            rows = [ln.split() for ln in f if ln.startswith("cpu") and ln.split()[0] in cpus]
    except (AttributeError, OSError):
        return None
    steal = busy = total = 0
    for r in rows:
        v = [int(x) for x in r[1:9]]  # user nice system idle iowait irq softirq steal
        steal, busy, total = steal + v[7], busy + v[0] + v[1] + v[2] + v[5] + v[6], total + sum(v)
    return CpuSample(steal, busy, total, time.process_time()) if rows else None


def cpu_contention(a: CpuSample | None, b: CpuSample | None) -> tuple[float | None, float | None]:
    """(stolen %, busy with other processes %) of this process's CPUs' time between samples
    a and b: the hypervisor's steal, and the CPUs' busy time less this process's own CPU time
    (clipped at 0); (None, None) without both samples or with no tick between them (10 ms
    ticks: take them a few hundred ms apart)."""
    if a is None or b is None or b.total <= a.total:
        return None, None
    dt = b.total - a.total
    hz = os.sysconf("SC_CLK_TCK")
    others = max(b.busy - a.busy - (b.own_s - a.own_s) * hz, 0.0)
    return round(100.0 * (b.steal - a.steal) / dt, 2), round(100.0 * others / dt, 2)


def median_event_us(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 2) -> float:
    """Median µs of ``fn()`` over ``reps`` runs after ``warmup`` runs, on one device with no
    process group: each run between two CUDA events on the current stream on a GPU,
    ``perf_counter`` on a CPU."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) * 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(out)


class _Alone:
    """The :class:`Ranks` of one process with no group: a device sync, no barrier."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def barrier(self) -> None:
        pass


def gpu_time_us(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 2) -> float:
    """Median µs of ``fn()`` on one device with no process group, as the profiler times
    compute (:func:`time_us`): on a GPU the device time alone (the host put ahead by a
    spin kernel, so a host-bound task is not timed by its host issue), ``perf_counter`` on
    a CPU."""
    return time_us(_Alone(device), fn, reps, warmup)
