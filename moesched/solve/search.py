"""The schedule search: knobs and priorities minimising the simulated step time.

Algorithm (every number is a simulated step time, µs, with the profile's interference):

1. **Published baselines.** All seven published policies are evaluated; the best is
   the incumbent, so the answer is never predicted slower than any of them.
2. **One-layer sub-simulations.** A one-layer model with the same shapes is simulated
   for every feasible degree r (closed-form order), attention chunked or not, flat or
   hierarchical all-to-all, and the priority variants (all-to-all order, dW placement).
   The ``loss`` task is a barrier (every forward task is its ancestor, every
   backward task its descendant, nothing runs when it starts), so one simulation at
   r_fwd = r_bwd = r yields the forward time F(r) and the backward time B(r) (loss included) exactly, and
   r_fwd, r_bwd are chosen independently: |r| simulations instead of |r|^2.
3. **Whole-step verification** of the best few one-layer combinations as uniform knobs.
4. **Gradients**: a 1-D search over S_p on a log grid 64 KiB..64 MiB (plus one bucket,
   the best published S_p, and a refinement between grid points; x4 steps for one-layer
   models, where only deferred dW GEMMs can overlap the all-reduce) jointly with the chunk priority rule
   (:class:`~moesched.solve.rules.Rule` ``grad``: A2A-first, ready order, or windows
   placing chunks d layers later), and reduction after backward.
5. **Per-layer coordinate descent** on backward degrees for blocks of layers at both
   ends of the model (where gradient placement differs from the interior), accepting
   strict improvements, at most ``DESCENT_EVALS`` whole-step simulations.

A time limit stops the search between simulations; the best candidate so far is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

from moesched.cluster import Cluster, check_setup
from moesched.errors import MoeschedError
from moesched.graph import check_memory
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.solve.candidates import (GRAD_CHUNK_GRID, Candidate, Clock, Evaluator, ordered_degrees,
                                       published)
from moesched.solve.rules import Rule
from moesched.schedules.priorities import n_grad_chunks

#: (all-to-all order, dW placement) variants simulated per one-layer graph.
VARIANTS = (("seq", "inline"), ("first", "inline"), ("seq", "layer"), ("first", "layer"))
#: One-layer combinations verified on the whole step.
TOP_K = 4
#: Most gradient chunks a grid S_p may cut the gradients into.
MAX_CHUNKS = 256
#: Cap on whole-step simulations of the per-layer descent (deterministic effort).
DESCENT_EVALS = 24


@dataclass
class Outcome:
    """What the search found: the best candidate, every published one (None where a
    policy cannot schedule the model), whether the time limit cut it short, and effort."""

    best: Candidate
    published: dict[str, Candidate | None]
    timed_out: bool
    sims: int
    elapsed_s: float
    finalists: list[Candidate] = field(default_factory=list)

    def runners_up(self, n: int) -> list[Candidate]:
        """Up to ``n`` searched candidates after ``best``, fastest first, one per pipeline
        shape (degrees, attention chunking, all-to-all kind, one gradient bucket or
        several): the variety a second opinion (the host model) can rank differently."""
        seen = {_shape(self.best.knobs)}
        out = []
        for c in self.finalists:
            if _shape(c.knobs) not in seen and len(out) < n:
                seen.add(_shape(c.knobs))
                out.append(c)
        return out


def _shape(k: Knobs) -> tuple:
    return k.r_fwd, k.r_bwd, k.at_chunked, k.a2a, k.grad_chunk_bytes is None


def check_feasible(model: MoEModel, cluster: Cluster, profile: Profile) -> None:
    """Raise MoeschedError when the model cannot run on the cluster: experts not divisible
    over the EP group, or a cluster the profile and network cannot price
    (:func:`moesched.cluster.check_setup`). GPU memory is checked by :func:`search`."""
    check_setup(model.experts, cluster, profile)


@dataclass(frozen=True)
class LayerSpec:
    """One combination of the one-layer sub-simulations: attention chunked (``at``), the
    all-to-all kind, forward and backward pipeline degrees, the all-to-all order of each
    pass, the dW placement, and ``rb_alts``, the backward degrees ranked fastest first under
    the same order and placement (the per-layer descent's alternatives)."""

    at: bool
    a2a: str
    r_fwd: int
    r_bwd: int
    a2a_fwd: str
    a2a_bwd: str
    dw: str
    rb_alts: tuple[int, ...] = ()

    def key(self) -> tuple:
        """The fields that make a whole-step candidate (``rb_alts`` left out)."""
        return self.at, self.a2a, self.r_fwd, self.r_bwd, self.a2a_fwd, self.a2a_bwd, self.dw


def _a2a_kinds(cluster: Cluster) -> list[str]:
    return ["flat", "hierarchical"] if cluster.nodes > 1 and cluster.scope("ep") != "intra" else ["flat"]


def layer_options(model: MoEModel, cluster: Cluster, profile: Profile, clock: Clock,
                  ev: Evaluator | None = None) -> list[tuple[float, LayerSpec]]:
    """Step 2: one-layer sub-simulations. Returns (F + B µs, spec) pairs, best first.
    ``ev``: an evaluator of the one-layer model to share (when the model has one layer)."""
    m1 = replace(model, layers=1, dense_layers=(), dense_ffn_hidden=None)  # one MoE layer
    ev = ev if ev is not None and ev.model == m1 else Evaluator(m1, cluster, profile)
    out: list[tuple[float, LayerSpec]] = []
    ats = [False] + ([True] if model.micro_batch > 1 else [])
    # r=1 with chunked attention is the unchunked graph: simulated once, shared.
    ones: dict[str, tuple[dict, dict]] = {}
    for at in ats:
        for a2a in _a2a_kinds(cluster):
            fwd: dict[tuple[int, str], float] = {}
            bwd: dict[tuple[int, str, str], float] = {}
            for r in ordered_degrees(m1, cluster, profile, at):
                if r == 1 and a2a in ones:
                    fwd.update(ones[a2a][0])
                    bwd.update(ones[a2a][1])
                    continue
                knobs = Knobs.uniform(1, r, at_chunked=at and r > 1, a2a=a2a)
                for comm, dw in VARIANTS:
                    if r == 1 and comm == "first":
                        continue  # one chunk: both orders coincide
                    starts: list[float] = []
                    ms = ev.step_us(knobs, Rule(comm, comm, dw), starts)
                    f = ev.compiled(knobs).loss_start_us(starts)
                    fwd[(r, comm)] = f
                    bwd[(r, comm, dw)] = ms - f
                if r == 1:
                    ones[a2a] = ({k: v for k, v in fwd.items() if k[0] == 1}, {k: v for k, v in bwd.items() if k[0] == 1})
                if clock.out():
                    break
            if not fwd:
                continue
            fs = sorted(fwd.items(), key=lambda kv: (kv[1], kv[0][0]))[:3]
            bs = sorted(bwd.items(), key=lambda kv: (kv[1], kv[0][0]))[:3]
            for (rf, cf), f in fs:
                for (rb, cb, dw), b in bs:
                    alts = tuple(k[0] for k, _ in sorted(bwd.items(), key=lambda kv: kv[1]) if k[1:] == (cb, dw))
                    out.append((f + b, LayerSpec(at, a2a, rf, rb, cf, cb, dw, alts)))
            if clock.out():
                return sorted(out, key=lambda x: x[0])
    return sorted(out, key=lambda x: x[0])


def _uniform(model: MoEModel, spec: LayerSpec, **kw: object) -> tuple[Knobs, Rule]:
    L = model.layers
    knobs = Knobs(r_fwd=(spec.r_fwd,) * L, r_bwd=(spec.r_bwd,) * L, at_chunked=spec.at, a2a=spec.a2a,
                  **kw)  # type: ignore[arg-type]
    return knobs, Rule(spec.a2a_fwd, spec.a2a_bwd, spec.dw, None)


class _Best:
    """The incumbent ``c`` (replaced only by a strictly faster candidate) and ``r``, the
    best candidate under a solver :class:`Rule`, from which the later steps search."""

    def __init__(self, first: Candidate) -> None:
        self.c = first
        self.r: Candidate | None = None
        self.seen: dict[tuple, Candidate] = {}  # fastest candidate per (knobs, rule)

    def offer(self, knobs: Knobs, rule: Rule, step_us: float, source: str) -> bool:
        cand = Candidate(knobs, rule, step_us, source)
        if (knobs, rule) not in self.seen:
            self.seen[(knobs, rule)] = cand
        if self.r is None or step_us < self.r.step_us * (1 - 1e-12):
            self.r = cand
        if step_us < self.c.step_us * (1 - 1e-12):
            self.c = cand
            return True
        return False


def _grad_search(model: MoEModel, cluster: Cluster, ev: Evaluator, best: _Best, clock: Clock,
                 extra: int | None = None) -> None:
    """Step 4: S_p on the log grid (+ refinement, + ``extra``) x chunk priority rule, and
    reduction after backward. Sizes cutting the gradients into more than MAX_CHUNKS
    chunks are skipped (graph size), except ``extra``."""
    if best.r is None:
        return
    base, rule0 = best.r.knobs, best.r.priority
    assert isinstance(rule0, Rule)
    # With one layer every chunk ranks after all of that layer's tasks: "ready" = "A2A-first".
    lags: list[int | None] = [None] + [d for d in (0, 1, 2, 4, 8) if d < model.layers and model.layers > 1]
    tried: dict[int | None, float] = {}
    cap = MAX_CHUNKS if model.layers > 1 else MAX_CHUNKS // 4
    grid = [sp for sp in GRAD_CHUNK_GRID if n_grad_chunks(model, cluster, sp) <= cap]
    if model.layers == 1:  # little to overlap: x4 steps suffice
        grid = grid[:1] + grid[1::2]
    for sp in dict.fromkeys(grid + [extra]):
        if clock.out():
            return
        if sp in tried:
            continue
        k = base.with_(grad_chunk_bytes=sp, grad_sync="overlap")
        if ev.link_bound_us(k) >= best.r.step_us:
            # Can improve neither r nor c (c <= r): skipped unbuilt, the result is unchanged.
            tried[sp] = math.inf
            continue
        best_here = math.inf
        for lag in lags:
            rule = replace(rule0, grad=lag)
            s = ev.step_us(k, rule)
            best_here = min(best_here, s)
            best.offer(k, rule, s, "search:grad")
        tried[sp] = best_here
    sp_best = best.r.knobs.grad_chunk_bytes
    if sp_best is not None:
        for f in (2 ** -0.5, 2 ** 0.5):
            sp = max(1024, int(round(sp_best * f / 1024)) * 1024)
            if clock.out():
                return
            k, rule = best.r.knobs.with_(grad_chunk_bytes=sp), best.r.priority
            best.offer(k, rule, ev.step_us(k, rule), "search:grad")  # type: ignore[arg-type]
    k, rule = best.r.knobs.with_(grad_sync="after_backward"), best.r.priority
    best.offer(k, rule, ev.step_us(k, rule), "search:grad")  # type: ignore[arg-type]


def _blocks(L: int) -> list[range]:
    """Layer blocks for the descent: single end layers, then growing prefixes/suffixes."""
    out = [range(L - 1, L), range(0, 1), range(L - 2, L - 1), range(1, 2)]
    k = 2
    while k < L:
        out += [range(L - k, L), range(0, k)]
        k *= 2
    return [b for b in out if 0 <= b.start and b.stop <= L and len(b)]


def _descent(model: MoEModel, ev: Evaluator, best: _Best, alts: list[int], clock: Clock) -> None:
    """Step 5: per-layer backward degrees on end blocks, strict improvements only."""
    L = model.layers
    evals = 0
    for block in _blocks(L):
        for r in alts:
            if evals >= DESCENT_EVALS or clock.out():
                return
            assert best.r is not None
            rb = list(best.r.knobs.r_bwd)
            if all(rb[i] == r for i in block):
                continue
            for i in block:
                rb[i] = r
            k, rule = best.r.knobs.with_(r_bwd=tuple(rb)), best.r.priority
            evals += 1
            best.offer(k, rule, ev.step_us(k, rule), "search:descent")  # type: ignore[arg-type]


def _layer_stage(model: MoEModel, cluster: Cluster, profile: Profile, ev: Evaluator, best: _Best, clock: Clock,
                 gc: int | None) -> list[LayerSpec]:
    """Steps 2-3: rank the one-layer combinations by sub-simulation, then offer the top
    ``TOP_K`` distinct ones as whole steps (with and without gradient chunks of ``gc``
    bytes). Returns those top combinations."""
    options = layer_options(model, cluster, profile, clock, ev)
    clock.say(f"one-layer sub-simulations: {len(options)} combinations")
    top: list[LayerSpec] = []
    for _, spec in options:
        if spec.key() not in [s.key() for s in top]:
            top.append(spec)
        if len(top) >= TOP_K:
            break
    for spec in top:
        if clock.out():
            break
        for sp in dict.fromkeys([None, gc]):
            knobs, rule = _uniform(model, spec, grad_chunk_bytes=sp)
            best.offer(knobs, rule, ev.step_us(knobs, rule), "search:layers")
    return top


def search(model: MoEModel, cluster: Cluster, profile: Profile, time_limit_s: float | None = None,
           progress: Callable[[str], None] | None = None, zero: int = 0) -> Outcome:
    """Run steps 1-5 (see the module docstring) and return the :class:`Outcome`.

    Raises MoeschedError for infeasible requests (see :func:`check_feasible`) and when a
    rank's memory under ZeRO stage ``zero`` exceeds the GPU (:func:`moesched.graph.check_memory`).
    """
    check_feasible(model, cluster, profile)
    check_memory(model, cluster, profile, zero)
    clock = Clock(time_limit_s, progress)
    ev = Evaluator(model, cluster, profile)
    pub = published(model, cluster, profile, ev)
    known = [c for c in pub.values() if c is not None]
    if not known:
        raise MoeschedError(f"no published schedule can run model {model.name} on cluster {cluster.label()}")
    first = min(known, key=lambda c: c.step_us)
    best = _Best(first)
    clock.say(f"published: best {first.source} {first.step_us / 1000:.3f} ms")

    # Published best knobs under the solver's priority rules.
    for comm, dw in VARIANTS:
        for lag in (None, 0):
            if clock.out():
                break
            rule = Rule(comm, comm, dw, lag)
            best.offer(first.knobs, rule, ev.step_us(first.knobs, rule), "search:published-knobs")

    gc = first.knobs.grad_chunk_bytes
    top = _layer_stage(model, cluster, profile, ev, best, clock, gc)
    clock.say(f"whole-step verification: best {best.c.step_us / 1000:.3f} ms ({best.c.source})")

    if not clock.out():
        _grad_search(model, cluster, ev, best, clock, extra=gc)
        # the other top combinations with the chosen gradient knobs
        for spec in top:
            if clock.out() or best.r is None:
                break
            k = best.r.knobs
            knobs, rule = _uniform(model, spec, grad_chunk_bytes=k.grad_chunk_bytes, grad_sync=k.grad_sync)
            rule = replace(rule, grad=best.r.priority.grad)  # type: ignore[union-attr]
            best.offer(knobs, rule, ev.step_us(knobs, rule), "search:grad")
        clock.say(f"gradient chunking: best {best.c.step_us / 1000:.3f} ms")
    if model.layers > 1 and best.r is not None and top and not clock.out():
        spec = next((s for s in top if (s.at, s.a2a) == (best.r.knobs.at_chunked, best.r.knobs.a2a)), top[0])
        alts = list(spec.rb_alts[:3])
        _descent(model, ev, best, alts, clock)
        clock.say(f"per-layer descent: best {best.c.step_us / 1000:.3f} ms")
    finalists = sorted(best.seen.values(), key=lambda c: c.step_us)
    return Outcome(best.c, pub, clock.hit, ev.sims, clock.elapsed_s(), finalists)
