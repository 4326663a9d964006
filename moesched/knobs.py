"""Schedule knobs: what a policy or the solver chooses for one training step."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from moesched.errors import MoeschedError

MAX_DEGREE = 16
GRAD_SYNC = ("overlap", "after_backward")
A2A_KINDS = ("flat", "hierarchical")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Knobs:
    """Attributes:
    r_fwd: pipeline degree per layer in forward (chunks along tokens), each 1..16.
    r_bwd: pipeline degree per layer in backward.
    at_chunked: attention, norm and gate join the pipeline (FlowMoE's AT tasks); chunks
        then split along samples, so every degree must divide the micro-batch.
    grad_chunk_bytes: gradient all-reduce chunk size S_p in bytes; None = one bucket.
    grad_sync: "overlap" (a chunk may start once its gradients exist) or
        "after_backward" (all reduction waits for the end of backward, DeepSpeed-MoE).
    a2a: "flat" (one NCCL all-to-all) or "hierarchical" (intra-node then inter-node, 2DH).
    serialize: no overlap at all: every task waits for the one before it (vanilla EP).
    """

    r_fwd: tuple[int, ...]
    r_bwd: tuple[int, ...]
    at_chunked: bool = False
    grad_chunk_bytes: int | None = None
    grad_sync: str = "overlap"
    a2a: str = "flat"
    serialize: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "r_fwd", tuple(int(r) for r in self.r_fwd))
        object.__setattr__(self, "r_bwd", tuple(int(r) for r in self.r_bwd))
        if len(self.r_fwd) != len(self.r_bwd) or not self.r_fwd:
            raise MoeschedError("knobs: r_fwd and r_bwd need one degree per layer")
        for r in self.r_fwd + self.r_bwd:
            if not 1 <= r <= MAX_DEGREE:
                raise MoeschedError(f"knobs: pipeline degree {r} outside 1..{MAX_DEGREE}")
        if self.grad_chunk_bytes is not None and self.grad_chunk_bytes <= 0:
            raise MoeschedError("knobs: grad_chunk_bytes must be positive or None")
        if self.grad_sync not in GRAD_SYNC:
            raise MoeschedError(f"knobs: grad_sync must be one of {GRAD_SYNC}")
        if self.a2a not in A2A_KINDS:
            raise MoeschedError(f"knobs: a2a must be one of {A2A_KINDS}")

    @classmethod
    def uniform(cls, layers: int, r: int = 1, r_bwd: int | None = None, **kw: Any) -> "Knobs":
        return cls(r_fwd=(r,) * layers, r_bwd=((r if r_bwd is None else r_bwd),) * layers, **kw)

    def with_(self, **kw: Any) -> "Knobs":
        return replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["r_fwd"], d["r_bwd"] = list(self.r_fwd), list(self.r_bwd)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "Knobs":
        """Knobs from JSON, checked by type before anything is built: degrees are integers
        (not booleans), flags real booleans, ``grad_chunk_bytes`` an integer or null."""
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) != names:
            raise MoeschedError(f"knobs must have exactly the keys {sorted(names)}")
        for key in ("r_fwd", "r_bwd"):
            if not isinstance(d[key], list) or not all(_is_int(r) for r in d[key]):
                raise MoeschedError(f"knobs: {key} must be a list of integers, got {d[key]!r:.60}")
        for key in ("at_chunked", "serialize"):
            if not isinstance(d[key], bool):
                raise MoeschedError(f"knobs: {key} must be true or false, got {d[key]!r:.60}")
        if d["grad_chunk_bytes"] is not None and not _is_int(d["grad_chunk_bytes"]):
            raise MoeschedError(f"knobs: grad_chunk_bytes must be a positive integer or null, "
                                f"got {d['grad_chunk_bytes']!r:.60}")
        for key in ("grad_sync", "a2a"):
            if not isinstance(d[key], str):
                raise MoeschedError(f"knobs: {key} must be a string, got {d[key]!r:.60}")
        return cls(**d)

    def chunking(self) -> str | None:
        """What cuts or reshapes the step beyond the one unchunked step (pipeline degree 1 in
        every layer, one gradient all-reduce after backward, a flat all-to-all), or None.
        ``grad_sync``, ``at_chunked`` and ``serialize`` change nothing at degree 1 and one
        bucket: the only bucket waits for the whole backward either way."""
        deep = sorted({r for r in self.r_fwd + self.r_bwd if r > 1})
        if deep:
            return f"pipeline degree {', '.join(map(str, deep))} (r_fwd {list(self.r_fwd)}, r_bwd {list(self.r_bwd)})"
        if self.grad_chunk_bytes is not None:
            return f"gradient chunks of {self.grad_chunk_bytes} bytes"
        if self.a2a != "flat":
            return f"{self.a2a} all-to-all"
        return None

    def check(self, layers: int, tokens: int, micro_batch: int) -> None:
        """Raise if the knobs do not fit a model of ``layers`` layers, ``tokens`` tokens and
        ``micro_batch`` samples per rank."""
        if len(self.r_fwd) != layers:
            raise MoeschedError(f"knobs give {len(self.r_fwd)} degrees for a model of {layers} layers")
        for r in set(self.r_fwd + self.r_bwd):
            if tokens % r:
                raise MoeschedError(f"pipeline degree {r} does not divide the {tokens} tokens per rank")
            if self.at_chunked and micro_batch % r:
                raise MoeschedError(f"pipeline degree {r} does not divide the micro-batch of {micro_batch} "
                                    "samples (attention chunks split along samples)")
