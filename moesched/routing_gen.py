"""Synthetic routing traces (:mod:`moesched.routing_trace`) for tests and what-if studies.

* ``zipf:S[,drift=D][,seed=N]``: expert popularity follows Zipf's law every step: the
  expert of popularity rank r (1..E) gets p = r^-S / H(E, S). Ranks come from scores
  z_e = -ln(r0_e) + w_e (r0: a random permutation per layer); with drift D > 0 every w_e
  takes a Gaussian random-walk step of standard deviation D per training step, so the
  popular experts change over steps while the skew stays Zipf(S) (D = 0: fixed ranks).
* ``dirichlet:A[,seed=N]``: every step and layer draws p ~ Dirichlet(A, ..., A) afresh
  (small A: skewed, large A: near even).
* ``even``: p_e = 1/E.

Every source rank routes its T*k copies by p, with each expert's share capped at 1/k (a
token picks an expert once, so an expert gets at most T copies from a rank; the excess is
spread over the others by water-filling) and rounded by largest remainders, so each rank
sends exactly T*k copies. Counts are expected values, not samples: the imbalance is the
distribution's, not noise's. Pure Python, deterministic per seed.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from moesched.errors import MoeschedError
from moesched.routing_trace import LayerRouting, RoutingTrace, TraceHeader

KINDS = ("zipf", "dirichlet", "even")


@dataclass(frozen=True)
class RoutingSpec:
    """A parsed generator spec (module docstring): kind, its parameter, drift and seed."""

    kind: str
    param: float = 0.0
    drift: float = 0.0
    seed: int = 0

    def __str__(self) -> str:
        if self.kind == "even":
            return "even"
        extra = f",drift={self.drift:g}" if self.kind == "zipf" and self.drift else ""
        return f"{self.kind}:{self.param:g}{extra},seed={self.seed}"


def parse_spec(text: str) -> RoutingSpec:
    """``zipf:1.2,drift=0.1,seed=3`` / ``dirichlet:0.5`` / ``even`` -> RoutingSpec."""
    kind, _, rest = text.strip().partition(":")
    if kind not in KINDS:
        raise MoeschedError(f"routing spec {text!r}: kind must be one of {KINDS} (or a trace file)")
    parts = [p.strip() for p in rest.split(",") if p.strip()] if rest else []
    if kind == "even":
        if parts:
            raise MoeschedError(f"routing spec {text!r}: even takes no parameters")
        return RoutingSpec("even")
    if not parts:
        raise MoeschedError(f"routing spec {text!r}: give the {'exponent' if kind == 'zipf' else 'concentration'}")
    kw: dict[str, float] = {}
    try:
        param = float(parts[0])
        for p in parts[1:]:
            k, _, v = p.partition("=")
            if k not in ("drift", "seed") or (k == "drift" and kind != "zipf"):
                raise MoeschedError(f"routing spec {text!r}: unknown option {k!r}")
            kw[k] = float(v)
    except ValueError:
        raise MoeschedError(f"routing spec {text!r}: parameters must be numbers") from None
    if not math.isfinite(param) or (kind == "zipf" and param < 0) or (kind == "dirichlet" and param <= 0):
        raise MoeschedError(f"routing spec {text!r}: zipf needs s >= 0, dirichlet alpha > 0")
    drift, seed = kw.get("drift", 0.0), kw.get("seed", 0.0)
    if not math.isfinite(drift) or drift < 0 or not math.isfinite(seed) or seed != int(seed) or seed < 0:
        raise MoeschedError(f"routing spec {text!r}: drift must be >= 0 and seed a non-negative integer")
    return RoutingSpec(kind, param, drift, int(seed))


def cap_shares(p: list[float], cap: float) -> list[float]:
    """p (sums to 1) with every entry at most ``cap`` (cap * len(p) >= 1), the excess spread
    over the uncapped entries in proportion to them (water-filling)."""
    p = list(p)
    fixed: set[int] = set()
    while True:
        over = [i for i, x in enumerate(p) if i not in fixed and x > cap + 1e-15]
        if not over:
            return p
        fixed.update(over)
        for i in over:
            p[i] = cap
        free = [i for i in range(len(p)) if i not in fixed]
        rest, mass = 1.0 - cap * len(fixed), sum(p[i] for i in free)
        for i in free:
            p[i] = p[i] * rest / mass if mass > 0 else rest / len(free)


def round_counts(p: list[float], total: int) -> list[int]:
    """Integers summing to ``total`` nearest to p * total (largest remainders)."""
    raw = [x * total for x in p]
    out = [math.floor(x) for x in raw]
    order = sorted(range(len(p)), key=lambda i: raw[i] - out[i], reverse=True)
    for i in order[:total - sum(out)]:
        out[i] += 1
    return out


def _dirichlet(rng: random.Random, alpha: float, n: int) -> list[float]:
    g = [rng.gammavariate(alpha, 1.0) for _ in range(n)]
    s = sum(g)
    return [x / s for x in g] if s > 0 else [1.0 / n] * n


def generate(spec: RoutingSpec, layers: int, experts: int, ep: int, tokens_per_rank: int, top_k: int,
             steps: int) -> RoutingTrace:
    """A trace of ``steps`` steps under ``spec`` (module docstring)."""
    if steps <= 0:
        raise MoeschedError(f"routing: steps must be positive, got {steps}")
    header = TraceHeader(layers, experts, ep, tokens_per_rank, top_k, source=str(spec))
    rng = random.Random(spec.seed)
    scores = []
    for _ in range(layers):
        ranks = list(range(1, experts + 1))
        rng.shuffle(ranks)
        scores.append([-math.log(r) for r in ranks])
    zipf = [r ** -spec.param for r in range(1, experts + 1)]
    zipf = [x / sum(zipf) for x in zipf]
    records = []
    for s in range(steps):
        for l in range(layers):
            if spec.kind == "zipf":
                if s and spec.drift:
                    scores[l] = [z + rng.gauss(0.0, spec.drift) for z in scores[l]]
                order = sorted(range(experts), key=lambda e: -scores[l][e])
                p = [0.0] * experts
                for r, e in enumerate(order):
                    p[e] = zipf[r]
            elif spec.kind == "dirichlet":
                p = _dirichlet(rng, spec.param, experts)
            else:
                p = [1.0 / experts] * experts
            row = round_counts(cap_shares(p, 1.0 / top_k), tokens_per_rank * top_k)
            records.append(LayerRouting.from_lists(s, l, [row] * ep))
    return RoutingTrace(header, tuple(records))
