"""Per-chunk loads under uneven routing: a chunked schedule's chunks receive unequal tokens.

A trace counts a step's copies per layer, source EP rank and expert, not per chunk. A
schedule that splits a layer's tokens into n chunks (pipeline degree r_fwd or r_bwd) sends
each chunk a slice of every source rank's tokens; which copies land in which chunk is
modelled as drawing without replacement: chunk c of source s takes m_c of the row's copies
(the row split as evenly as integers allow), and its copies per expert follow the
multivariate hypergeometric law (drawn expert by expert, each a normal approximation of
the univariate hypergeometric, rounded and clamped to its support, so every chunk's counts
sum to m_c and the chunks sum to the row exactly). Draws are seeded by (step, layer, n):
the forward and backward chunks of a layer with the same degree see the same split, and
every plan of a comparison sees the same loads.

:func:`apply_chunk_loads` re-prices, on a graph that :func:`moesched.routing.apply_routing`
priced with the layer's shares, each expert task and flat all-to-all of chunk c on rank r
from that chunk's own received (and sent) copies: the layer-share duration scaled by the
chunk's copies over the layer's copies times the chunk's tokens over the layer's tokens.
A single-chunk layer is unchanged.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import networkx as nx

from moesched.routing import A2A_KINDS, EXPERT_KINDS
from moesched.routing_gen import round_counts

Matrix = tuple[tuple[int, ...], ...]


def _hypergeom(rng: random.Random, population: int, successes: int, draws: int) -> int:
    """One approximate hypergeometric draw (successes among ``draws`` from ``population``)."""
    lo, hi = max(0, draws - (population - successes)), min(successes, draws)
    if lo >= hi or population <= 1:
        return lo
    p = successes / population
    var = draws * p * (1 - p) * (population - draws) / (population - 1)
    x = round(draws * p + math.sqrt(max(var, 0.0)) * rng.gauss(0.0, 1.0))
    return min(hi, max(lo, x))


def split_row(row: Sequence[int], n: int, rng: random.Random) -> list[list[int]]:
    """``row`` (copies per expert of one source rank) split into ``n`` chunks (module
    docstring); returns [chunk][expert], the chunks summing to ``row``."""
    left = list(row)
    sizes = round_counts([1.0 / n] * n, sum(left)) if sum(left) else [0] * n
    out = []
    for m in sizes[:-1]:
        chunk, pop = [], sum(left)
        for x in left:
            h = _hypergeom(rng, pop, x, m)
            chunk.append(h)
            pop, m = pop - x, m - h
        left = [a - b for a, b in zip(left, chunk)]
        out.append(chunk)
    return out + [left]


def chunk_rows(kept: Matrix, n: int, seed: int) -> list[list[list[int]]]:
    """A layer's kept copies [source][expert] split into ``n`` chunks: [chunk][source][expert]."""
    rng = random.Random(seed)
    per_src = [split_row(row, n, rng) for row in kept]
    return [[per_src[s][c] for s in range(len(kept))] for c in range(n)]


def chunk_seed(step: int, layer: int, n: int) -> int:
    """The seed of a (step, layer, degree) split."""
    return (step * 1_000_003 + layer) * 97 + n


def _shares(rows: list[list[int]], ep: int) -> tuple[list[int], list[int]]:
    """(received, sent) copies of each EP rank, experts e on rank e // (E / ep)."""
    El = len(rows[0]) // ep
    recv = [sum(sum(r[d * El:(d + 1) * El]) for r in rows) for d in range(ep)]
    return recv, [sum(r) for r in rows]


def apply_chunk_loads(g: nx.DiGraph, kept: Sequence[Matrix], step: int, ep: int, tokens: int) -> nx.DiGraph:
    """Re-price the chunks of ``g`` (priced per layer by :func:`moesched.routing.apply_routing`)
    from per-chunk loads (module docstring). ``kept[l]``: layer l's kept copies [source EP
    rank][expert]; ``tokens``: a layer's tokens per rank. Modifies and returns ``g``."""
    cache: dict[tuple[int, int], list[tuple[list[int], list[int]]]] = {}
    for _, a in g.nodes(data=True):
        n = int(a.get("nchunks", 1))
        if n <= 1 or "duration_by_rank_us" not in a or (a["kind"] not in EXPERT_KINDS and a["kind"] not in A2A_KINDS):
            continue
        if a["kind"] in A2A_KINDS and a.get("hop") is not None:
            continue
        l = a["layer"]
        if (l, n) not in cache:
            cache[l, n] = [_shares(rows, ep) for rows in chunk_rows(kept[l], n, chunk_seed(step, l, n))]
        recv_l, sent_l = _shares([list(r) for r in kept[l]], ep)
        recv_c, sent_c = cache[l, n][a["chunk"]]
        frac = float(a.get("tokens") or tokens) / tokens   # the chunk's share of the layer's tokens
        out = []
        cp = a.get("saved_copy_by_rank_us") or [0.0] * len(a["duration_by_rank_us"])  # the layer's: not rescaled
        for r, us in enumerate(a["duration_by_rank_us"]):
            q = r % ep
            if a["kind"] in EXPERT_KINDS:
                base, mine = recv_l[q], recv_c[q]
            else:
                base, mine = max(recv_l[q], sent_l[q]), max(recv_c[q], sent_c[q])
            out.append((us - cp[r]) * mine / (base * frac) + cp[r] if base > 0 and frac > 0 else us)
        a["duration_by_rank_us"] = out
    return g
