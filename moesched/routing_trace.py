"""Routing traces: which experts every EP rank's tokens chose, per step and layer.

A trace is a JSON-lines file (format ``moesched.routing``, version 1; docs/formats.md):
the first line is a :class:`TraceHeader`, every further line a :class:`LayerRouting`
record. ``LayerRouting.copies[s][e]`` counts the token copies that EP rank ``s`` (its EP
index) routed to global expert ``e`` in one step and layer, as the router chose them,
*before* any capacity is applied: capacity is a property of the model a trace is replayed
on (:meth:`LayerRouting.kept`), so one trace serves dropless and capacity-factor plans, and
any placement of experts on ranks (expert ``e`` lives on EP rank ``e // (E/S)`` by default;
a placement maps experts to ranks otherwise).

Every record of a valid trace has an S x E matrix of non-negative integers whose rows sum to
at most ``tokens_per_rank * experts`` (a token copy goes to an expert at most once), and the
steps hold every layer exactly once, in increasing step order. :func:`load` refuses anything
else with one line (:class:`MoeschedError`). Pure Python: no torch, no numpy.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from moesched.errors import MoeschedError
from moesched.fileio import PathLike, write_atomic

FORMAT = "moesched.routing"
VERSION = 1
HEADER_KEYS = frozenset({"format", "version", "layers", "experts", "ep", "tokens_per_rank", "top_k", "router",
                         "source"})
RECORD_KEYS = frozenset({"step", "layer", "copies"})

Matrix = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class TraceHeader:
    """What a trace was recorded on.

    Attributes:
        layers: MoE layers per step.
        experts: routed experts E per layer.
        ep: EP group size S (rows of every record).
        tokens_per_rank: tokens T each EP rank routed per step.
        top_k: experts per token k of the router (expert choice: the mean copies per token).
        router: the routing function's name (:data:`moesched.models.ROUTERS`).
        source: how the trace was made (a command line, or ``zipf:s=1.2,drift=0.1``).
    """

    layers: int
    experts: int
    ep: int
    tokens_per_rank: int
    top_k: int
    router: str = "topk_softmax"
    source: str = ""

    def __post_init__(self) -> None:
        for f in ("layers", "experts", "ep", "tokens_per_rank", "top_k"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise MoeschedError(f"routing trace: {f} must be a positive integer, got {v!r}")
        if self.experts % self.ep:
            raise MoeschedError(f"routing trace: experts={self.experts} do not divide over ep={self.ep}")
        if self.top_k > self.experts:
            raise MoeschedError(f"routing trace: top_k={self.top_k} exceeds experts={self.experts}")
        if not isinstance(self.router, str) or not isinstance(self.source, str):
            raise MoeschedError("routing trace: router and source must be strings")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "layers": self.layers, "experts": self.experts,
                "ep": self.ep, "tokens_per_rank": self.tokens_per_rank, "top_k": self.top_k,
                "router": self.router, "source": self.source}


@dataclass(frozen=True)
class LayerRouting:
    """One step and layer: ``copies[s][e]`` token copies from EP rank s to expert e
    (S x E, before capacity)."""

    step: int
    layer: int
    copies: Matrix

    @classmethod
    def from_lists(cls, step: int, layer: int, copies: Sequence[Sequence[int]]) -> "LayerRouting":
        return cls(int(step), int(layer), tuple(tuple(int(x) for x in row) for row in copies))

    def expert_load(self) -> list[int]:
        """Copies each expert receives from all ranks [E]."""
        return [sum(col) for col in zip(*self.copies)]

    def kept(self, capacity: int | None) -> Matrix:
        """Copies kept when each expert takes at most ``capacity`` copies from each source
        rank (GShard capacity C = ceil(f*k*T/E) per rank, as the executor applies it:
        :func:`executor.layers.keep_mask`); None = dropless (all kept)."""
        if capacity is None:
            return self.copies
        return tuple(tuple(min(x, capacity) for x in row) for row in self.copies)

    def dropped(self, capacity: int | None) -> int:
        """Copies over capacity (0 when dropless)."""
        return sum(map(sum, self.copies)) - sum(map(sum, self.kept(capacity)))

    def rank_matrix(self, capacity: int | None = None, placement: Sequence[int] | None = None) -> Matrix:
        """[S][S] kept copies from EP rank src to EP rank dst (the rank holding each expert:
        ``placement[e]``, by default e // (E/S)); what :class:`moesched.routing.Routing` holds."""
        S, E = len(self.copies), len(self.copies[0])
        where = list(placement) if placement is not None else [e // (E // S) for e in range(E)]
        out = [[0] * S for _ in range(S)]
        for s, row in enumerate(self.kept(capacity)):
            for e, x in enumerate(row):
                out[s][where[e]] += x
        return tuple(tuple(r) for r in out)

    def imbalance(self) -> float:
        """max over experts of the load / mean load (1.0 = even)."""
        load = self.expert_load()
        mean = sum(load) / len(load)
        return max(load) / mean if mean > 0 else 1.0

    def rank_imbalance(self, capacity: int | None = None, placement: Sequence[int] | None = None) -> float:
        """max over EP ranks of the copies received / their mean (1.0 = even), experts placed
        as :meth:`rank_matrix` places them."""
        recv = [sum(col) for col in zip(*self.rank_matrix(capacity, placement))]
        mean = sum(recv) / len(recv)
        return max(recv) / mean if mean > 0 else 1.0

    def to_dict(self) -> dict:
        return {"step": self.step, "layer": self.layer, "copies": [list(r) for r in self.copies]}


@dataclass(frozen=True)
class RoutingTrace:
    """A header and its records, ordered by (step, layer), every step complete."""

    header: TraceHeader
    records: tuple[LayerRouting, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_records(self.header, self.records)

    @property
    def steps(self) -> list[int]:
        """Step numbers, in order."""
        return sorted({r.step for r in self.records})

    def step(self, step: int) -> list[LayerRouting]:
        """Records of one step, by layer."""
        return sorted((r for r in self.records if r.step == step), key=lambda r: r.layer)

    def imbalance_by_step(self) -> list[list[float]]:
        """[step][layer] max/mean expert load."""
        return [[r.imbalance() for r in self.step(s)] for s in self.steps]

    def to_jsonl(self) -> str:
        lines = [json.dumps(self.header.to_dict())]
        lines += [json.dumps(r.to_dict(), separators=(",", ":")) for r in self.records]
        return "\n".join(lines) + "\n"

    def save(self, path: PathLike) -> None:
        write_atomic(path, self.to_jsonl())


def _check_records(h: TraceHeader, records: Sequence[LayerRouting]) -> None:
    """Raise MoeschedError unless every record is an S x E count matrix within bounds, and the
    steps are increasing, each holding every layer once."""
    seen: dict[int, set[int]] = {}
    last = -1
    for r in records:
        where = f"routing trace: step {r.step} layer {r.layer}"
        if not 0 <= r.layer < h.layers:
            raise MoeschedError(f"{where}: layer out of range [0, {h.layers})")
        if r.step < last:
            raise MoeschedError(f"{where}: steps are not in increasing order")
        last = r.step
        if r.layer in seen.setdefault(r.step, set()):
            raise MoeschedError(f"{where}: recorded twice")
        seen[r.step].add(r.layer)
        if len(r.copies) != h.ep or any(len(row) != h.experts for row in r.copies):
            raise MoeschedError(f"{where}: copies must be {h.ep} x {h.experts} (EP ranks x experts)")
        for row in r.copies:
            if any(x < 0 for x in row):
                raise MoeschedError(f"{where}: negative copy count")
            if sum(row) > h.tokens_per_rank * h.experts:
                raise MoeschedError(f"{where}: a rank routes more copies than tokens_per_rank x experts")
    for s, layers in seen.items():
        if len(layers) != h.layers:
            raise MoeschedError(f"routing trace: step {s} has {len(layers)} of {h.layers} layers")


def _int(d: dict, key: str, where: str) -> int:
    v = d[key]
    if not isinstance(v, int) or isinstance(v, bool):
        raise MoeschedError(f"{where}: {key} must be an integer, got {v!r}")
    return v


def _header(d: object, where: str) -> TraceHeader:
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise MoeschedError(f"{where}: not a routing trace (first line must have format {FORMAT!r})")
    if d.get("version") != VERSION:
        raise MoeschedError(f"{where}: unsupported routing trace version {d.get('version')!r} (expected {VERSION})")
    if set(d) != HEADER_KEYS:
        raise MoeschedError(f"{where}: header has wrong keys (missing {sorted(HEADER_KEYS - set(d))}, "
                            f"unknown {sorted(set(d) - HEADER_KEYS)})")
    return TraceHeader(**{k: (d[k] if k in ("router", "source") else _int(d, k, where))
                          for k in HEADER_KEYS - {"format", "version"}})


def _record(d: object, where: str) -> LayerRouting:
    if not isinstance(d, dict) or set(d) != RECORD_KEYS:
        raise MoeschedError(f"{where}: a record must have exactly the keys {sorted(RECORD_KEYS)}")
    c = d["copies"]
    if not isinstance(c, list) or not all(isinstance(row, list) for row in c) or not all(
            isinstance(x, int) and not isinstance(x, bool) for row in c for x in row):
        raise MoeschedError(f"{where}: copies must be a list of lists of integers")
    return LayerRouting.from_lists(_int(d, "step", where), _int(d, "layer", where), c)


def parse(lines: Iterable[str], name: str = "routing trace") -> RoutingTrace:
    """A trace from its JSON lines (blank lines ignored); MoeschedError on anything wrong."""
    header: TraceHeader | None = None
    records: list[LayerRouting] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name} line {i}"
        try:
            d = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise MoeschedError(f"{where}: not JSON ({e})") from None
        if header is None:
            header = _header(d, where)
        else:
            records.append(_record(d, where))
    if header is None:
        raise MoeschedError(f"{name}: empty file")
    if not records:
        raise MoeschedError(f"{name}: no records")
    try:
        return RoutingTrace(header, tuple(records))
    except MoeschedError as e:
        raise MoeschedError(f"{name}: {e}") from None


def is_trace_path(text: str) -> bool:
    """Whether ``text`` names an existing file (a name the OS refuses, such as one too long,
    is not a file)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def load(path: PathLike) -> RoutingTrace:
    """Read and validate a trace file (one-line MoeschedError for any problem)."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise MoeschedError(f"routing trace {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    return parse(text.splitlines(), f"routing trace {path}")


def iter_layer_loads(trace: RoutingTrace) -> Iterator[tuple[int, int, list[int]]]:
    """(step, layer, expert loads [E]) of every record."""
    for r in trace.records:
        yield r.step, r.layer, r.expert_load()


def capacity_per_rank(capacity_factor: float | None, top_k: int, tokens: int, experts: int) -> int | None:
    """C = ceil(f*k*T/E) slots per expert from one rank (GShard, Lepikhin et al. 2020, Sec. 2.2);
    None when dropless."""
    return None if capacity_factor is None else math.ceil(capacity_factor * top_k * tokens / experts)
