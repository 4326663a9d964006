"""Overlap of communication and compute in a user's own torch.profiler trace (Chrome JSON),
torch-free: which GPU kernels communicate, how long they ran, and how much of that time no
compute kernel ran (exposed communication).

A kernel (``cat`` "kernel") communicates when its name matches :data:`COMM_PATTERNS` (NCCL
collectives and point-to-point, DeepEP's dispatch/combine and their notify kernels, the
all-to-all kernels of Tutel and torch); every other kernel computes. Times are the trace's
µs. With ``user_annotation`` ranges (``record_function`` labels, as moesched's executor and
DeepSeek's DualPipe profile write them) the report also gives each label's total time.
"""
from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field

from moesched.errors import MoeschedError
from moesched.fileio import read_json
from moesched.sim import intervals_length, uncovered_intervals, union_intervals

#: Kernel names that communicate (case-insensitive regular expressions).
COMM_PATTERNS = (r"nccl", r"\bep::", r"deep_?ep", r"all_?to_?all", r"alltoall", r"all_?reduce", r"all_?gather",
                 r"reduce_?scatter", r"sendrecv")
_COMM = re.compile("|".join(COMM_PATTERNS), re.IGNORECASE)


@dataclass(frozen=True)
class Kernel:
    """One GPU kernel: name, stream (``tid``), start and end (µs), whether it communicates."""

    name: str
    stream: int
    start_us: float
    end_us: float
    comm: bool


@dataclass
class OverlapReport:
    """Span of the kernels, busy time of compute and of communication (µs, each the union
    of its kernels), the communication no compute covered, and per-label totals (µs)."""

    span_us: float
    compute_us: float
    comm_us: float
    exposed_comm_us: float
    kernels: int
    comm_kernels: int
    labels_us: dict[str, float] = field(default_factory=dict)

    @property
    def hidden_share(self) -> float:
        """Share of communication time that ran under compute (1 when there is none)."""
        return 1.0 - self.exposed_comm_us / self.comm_us if self.comm_us else 1.0

    def lines(self) -> list[str]:
        out = [f"kernels: {self.kernels} ({self.comm_kernels} communicating), span {self.span_us / 1e3:.2f} ms",
               f"compute busy {self.compute_us / 1e3:.2f} ms, communication busy {self.comm_us / 1e3:.2f} ms",
               f"exposed communication {self.exposed_comm_us / 1e3:.2f} ms: {100 * self.hidden_share:.1f}% of "
               f"the communication time ran under compute"]
        if self.labels_us:
            out.append("labels (record_function), total ms: " + ", ".join(
                f"{k} {v / 1e3:.2f}" for k, v in sorted(self.labels_us.items(), key=lambda kv: -kv[1])))
        return out


def read_kernels(path: str | os.PathLike) -> tuple[list[Kernel], dict[str, float]]:
    """The GPU kernels of a torch.profiler trace and the total µs of each user annotation
    (``ProfilerStep#`` ranges left out). One-line MoeschedError for a file that is not a
    Chrome trace or has no kernels."""
    d = read_json(path, "profiler trace")
    events = d.get("traceEvents") if isinstance(d, dict) else d
    if not isinstance(events, list):
        raise MoeschedError(f"profiler trace {path}: expected a Chrome trace (a traceEvents list)")
    kernels, labels = [], defaultdict(float)
    for e in events:
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        try:
            start, dur = float(e["ts"]), float(e.get("dur", 0.0))
            tid = int(e.get("tid", 0)) if e.get("cat") == "kernel" else 0
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
        if not (math.isfinite(start) and math.isfinite(dur) and dur >= 0):
            raise MoeschedError(f"profiler trace {path}: event {str(e.get('name', ''))[:40]!r} has ts {start:g}, "
                                f"dur {dur:g} (expected finite, dur >= 0)")
        name = str(e.get("name", ""))
        if e.get("cat") == "kernel":
            kernels.append(Kernel(name, tid, start, start + dur, bool(_COMM.search(name))))
        elif e.get("cat") == "user_annotation" and not name.startswith("ProfilerStep#"):
            labels[name] += dur
    if not kernels:
        raise MoeschedError(f"profiler trace {path}: no GPU kernels (was it recorded with ProfilerActivity.CUDA?)")
    return kernels, dict(labels)


def overlap_report(kernels: list[Kernel], labels_us: dict[str, float] | None = None) -> OverlapReport:
    """Busy times and exposed communication of ``kernels`` (see the module docstring)."""
    comm = union_intervals([[k.start_us, k.end_us] for k in kernels if k.comm])
    comp = union_intervals([[k.start_us, k.end_us] for k in kernels if not k.comm])
    span = max(k.end_us for k in kernels) - min(k.start_us for k in kernels)
    exposed = intervals_length(uncovered_intervals(comm, comp))
    return OverlapReport(span, intervals_length(comp), intervals_length(comm), exposed, len(kernels),
                         sum(k.comm for k in kernels), dict(labels_us or {}))
