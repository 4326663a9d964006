"""Plans priced under uneven routing: a routing trace (or generator) applied to a model on a
cluster, step by step.

:func:`step_load` turns one step of a trace (:mod:`moesched.routing_trace`) into what the
simulator needs for ``model`` on ``cluster``: the trace's copies rescaled to the model's
T*k copies per rank (largest remainders), its source rows merged or split to the cluster's
EP size, the model's capacity applied per source rank and expert (C = ceil(f k T / E),
GShard; the rest dropped and counted), then per layer the kept S x S rank matrix
(:class:`moesched.routing.Routing`) and each EP rank's copies per local expert (expert e on
EP rank e // (E/S)). A trace must have the model's experts, and the model a multiple of
its layers (layer l replays the trace's layer l mod its layers); else one line.

:func:`step_timeline` prices a plan (knobs + issue order) under one step's load: the graph's
expert tasks and flat all-to-alls take each rank's own load per layer
(:func:`moesched.routing.apply_routing`: every chunk of a layer takes the layer's shares,
or with ``chunk_loads`` its own draw, :mod:`moesched.imbalance_chunks`;
the two hops of a hierarchical all-to-all by :func:`hop_shares`),
and an expert task on uneven groups is priced as a grouped GEMM on those groups
(:func:`uneven_expert_us`: the operator tables' price of the groups, or a curve measured on
the model's shape times the tables' uneven / even ratio); without operator tables in
proportion to the rank's total copies. The step
is replayed in strict order (as the executor runs a plan). :func:`expected` averages over
sampled steps and reports the 90th percentile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from moesched import work
from moesched.cluster import Cluster, collective_us
from moesched.errors import MoeschedError
from moesched.graph import build
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.ops import even_split, uneven_expert_ops
from moesched.profile import Profile
from moesched.routing import A2A_KINDS, EXPERT_KINDS, Routing, apply_routing
from moesched.routing_gen import generate, parse_spec, round_counts
from moesched.routing_trace import LayerRouting, RoutingTrace, capacity_per_rank, is_trace_path, load
from moesched.sim import Timeline, simulate

DEFAULT_SAMPLES = 8


@dataclass(frozen=True)
class StepLoad:
    """One step's routing on a cluster's EP group (module docstring).

    Attributes:
        step: the trace's step number.
        routing: per layer, kept copies from EP rank src to EP rank dst.
        groups: [layer][EP rank][local expert] kept copies received.
        dropped: copies over capacity, all layers and EP ranks.
        kept: per layer, kept copies [source EP rank][expert] (for per-chunk loads,
            :mod:`moesched.imbalance_chunks`).
    """

    step: int
    routing: Routing
    groups: tuple[tuple[tuple[int, ...], ...], ...]
    dropped: int
    kept: tuple[tuple[tuple[int, ...], ...], ...] = ()


def _rows(rec: LayerRouting, ep: int) -> list[list[int]]:
    """The record's source rows as ``ep`` rows: groups of rows summed, or rows split evenly."""
    S = len(rec.copies)
    if S == ep:
        return [list(r) for r in rec.copies]
    if S % ep == 0:
        g = S // ep
        return [[sum(col) for col in zip(*rec.copies[i * g:(i + 1) * g])] for i in range(ep)]
    if ep % S == 0:
        g = ep // S
        out = []
        for r in rec.copies:
            parts = [round_counts([1.0 / g] * g, x) for x in r]          # x copies split over g sources
            out += [[parts[e][i] for e in range(len(r))] for i in range(g)]
        return out
    raise MoeschedError(f"routing trace: its EP size {S} and the cluster's {ep} do not divide one another")


def _scaled(row: list[int], total: int) -> list[int]:
    s = sum(row)
    return round_counts([x / s for x in row], total) if s > 0 else [0] * len(row)


def check_trace_fits(trace: RoutingTrace, model: MoEModel) -> None:
    """Raise MoeschedError unless the trace has the model's experts and the model a multiple
    of its layers."""
    h = trace.header
    if h.experts != model.experts:
        raise MoeschedError(f"routing trace has {h.experts} experts, the model {model.name} {model.experts}: "
                            "a trace of this model is needed")
    if model.layers % h.layers:
        raise MoeschedError(f"routing trace has {h.layers} layers, the model {model.name} {model.layers}: the "
                            f"model's layers must be a multiple of the trace's (e.g. --layers {h.layers})")


def step_load(trace: RoutingTrace, step: int, model: MoEModel, ep: int) -> StepLoad:
    """One step of ``trace`` for ``model`` on an EP group of ``ep`` ranks (module docstring)."""
    h = trace.header
    check_trace_fits(trace, model)
    full = model.tokens * model.top_k
    scale = full / (h.tokens_per_rank * h.top_k * h.ep / ep)   # a source row after merging or splitting
    cap = capacity_per_rank(model.capacity_factor, model.top_k, model.tokens, model.experts)
    El = model.experts // ep
    mats, groups, dropped, kepts = [], [], 0, []
    recs = trace.step(step)
    for layer in range(model.layers):
        rows = [_scaled(r, min(full, round(sum(r) * scale))) for r in _rows(recs[layer % h.layers], ep)]
        scaled = LayerRouting.from_lists(step, layer, rows)
        dropped += scaled.dropped(cap)
        kept = scaled.kept(cap)
        kepts.append(kept)
        mats.append(scaled.rank_matrix(cap))
        recv = [sum(col) for col in zip(*kept)]
        groups.append(tuple(tuple(recv[d * El:(d + 1) * El]) for d in range(ep)))
    return StepLoad(step, Routing(tuple(mats)), tuple(groups), dropped, tuple(kepts))


def load_source(text: str, model: MoEModel, cluster: Cluster, steps: int = 64) -> RoutingTrace:
    """``--routing``: a trace file, or a generator spec (``zipf:1.2[,drift=0.1]``,
    ``dirichlet:0.5``, ``even``; :mod:`moesched.routing_gen`) drawn for ``steps`` steps."""
    if is_trace_path(text):
        return load(text)
    try:
        spec = parse_spec(text)
    except MoeschedError as e:
        raise MoeschedError(f"--routing {text!r}: not a trace file, and {e}") from None
    return generate(spec, model.layers, model.experts, cluster.ep_size, model.tokens, model.top_k, steps)


def sample_steps(trace: RoutingTrace, n: int = DEFAULT_SAMPLES) -> list[int]:
    """``n`` steps spread evenly over the trace (all of them when it has at most n)."""
    steps = trace.steps
    if len(steps) <= n:
        return steps
    return [steps[round(i * (len(steps) - 1) / (n - 1))] for i in range(n)] if n > 1 else [steps[-1]]


def uneven_expert_us(profile: Profile, kind: str, model: MoEModel, copies: tuple[int, ...],
                     even_us: float) -> float:
    """µs of expert task ``kind`` on one EP rank whose local experts receive ``copies`` [E/ep]
    routed copies, where ``even_us`` is the task's price on the same total copies spread
    evenly (the profile's curve or per-kind line). With operator tables for the model's
    dtype: a curve measured on the model's shape keeps its level and takes the tables'
    uneven / even ratio on these groups (:func:`moesched.ops.uneven_expert_ops`); without
    a curve the tables price the uneven groups directly. Without tables: ``even_us``."""
    ops = profile.ops
    if ops is None or ops.run_dtype(model.dtype) is None or sum(copies) <= 0:
        return even_us
    dtype = ops.run_dtype(model.dtype)
    cpu = ops.runs_as is not None
    grouped, width = dtype == "bf16" and not cpu, 4 if cpu else None
    uneven = ops.task_us(kind, dtype, uneven_expert_ops(kind, model, list(copies), grouped, width, ops.recipe))
    if kind not in (profile.shapes.get(model.shape_key()) or {}):
        return uneven
    even = ops.task_us(kind, dtype, uneven_expert_ops(kind, model, even_split(sum(copies), len(copies)), grouped,
                                                      width, ops.recipe))
    return even_us * uneven / even if even > 0 else even_us


def hop_shares(m: tuple[tuple[int, ...], ...], gpus_per_node: int, even: float) -> dict[str, list[float]]:
    """Per EP rank, the share of the even buffer each hop of a hierarchical all-to-all carries
    under the kept matrix m [S][S] (Tutel's 2DH, :func:`moesched.work.a2a_hops`): EP rank
    q = (node n, local g). Intra hop: rank (n, g) sends its sent rows and receives mid[(n, g)]
    = the rows every rank of node n sends to local index g on any node; inter hop: it sends
    mid and receives its received rows. A hop costs a rank the larger of its two sides
    (dispatch and combine directions alike)."""
    S, G = len(m), gpus_per_node
    sent = [sum(row) for row in m]
    recv = [sum(m[s][d] for s in range(S)) for d in range(S)]
    mid = [sum(m[(q // G) * G + g][d] for g in range(G) for d in range(S) if d % G == q % G) for q in range(S)]
    return {"intra": [max(sent[q], mid[q]) / even for q in range(S)],
            "inter": [max(mid[q], recv[q]) / even for q in range(S)]}


def _price_hops(g, model: MoEModel, cluster: Cluster, profile: Profile, sl: StepLoad) -> None:
    """Per-rank durations of the hops of hierarchical all-to-alls from the step's load."""
    even = float(work.routed_copies(model, model.tokens))
    ep, R = cluster.ep_size, cluster.world
    shares = [hop_shares(mat, cluster.gpus_per_node, even) for mat in sl.routing.copies]
    for _, a in g.nodes(data=True):
        if a["kind"] in A2A_KINDS and a.get("hop") in ("intra", "inter"):
            sh = shares[a["layer"]][a["hop"]]
            a["duration_by_rank_us"] = [collective_us(cluster, profile, "all_to_all", f"ep_{a['hop']}",
                                                      float(a["work"]) * sh[r % ep], model.shape_key())
                                        for r in range(R)]


def step_timeline(model: MoEModel, cluster: Cluster, profile: Profile, knobs: Knobs, order: list[str],
                  sl: StepLoad, chunk_loads: bool = False) -> Timeline:
    """The plan (knobs, issue order) replayed under one step's load (module docstring);
    ``chunk_loads``: each chunk of a chunked layer priced from its own share of the load
    (:mod:`moesched.imbalance_chunks`) instead of the layer's shares."""
    g = apply_routing(build(model, cluster, profile, knobs), model, cluster, profile, sl.routing)
    _price_hops(g, model, cluster, profile, sl)
    ep = cluster.ep_size
    if profile.ops is not None:
        total: dict[tuple[str, int], float] = {}
        for _, a in g.nodes(data=True):
            if a["kind"] in EXPERT_KINDS:
                total[a["kind"], a["layer"]] = total.get((a["kind"], a["layer"]), 0.0) + float(a["work"])
        for _, a in g.nodes(data=True):
            if a["kind"] in EXPERT_KINDS:  # this chunk's share of the layer's copies, per local expert
                share = float(a["work"]) / total[a["kind"], a["layer"]] if total[a["kind"], a["layer"]] else 0.0
                cp = a["saved_copy_by_rank_us"]  # the saved-activation copy: not a GEMM, kept as is
                a["duration_by_rank_us"] = [
                    uneven_expert_us(profile, a["kind"], model,
                                      tuple(round(c * share) for c in sl.groups[a["layer"]][r % ep]), us - cp[r]) + cp[r]
                    for r, us in enumerate(a["duration_by_rank_us"])]
    if chunk_loads:
        from moesched.imbalance_chunks import apply_chunk_loads
        apply_chunk_loads(g, sl.kept, sl.step, ep, model.tokens)
    return simulate(g, {t: i for i, t in enumerate(order)}, strict=True)


@dataclass(frozen=True)
class Expected:
    """A plan under a routing distribution: step time mean and 90th percentile over the
    sampled steps (µs), the even-routing step (µs), and mean copies dropped per step."""

    mean_us: float
    p90_us: float
    even_us: float
    dropped: float

    @property
    def slowdown(self) -> float:
        """mean / even."""
        return self.mean_us / self.even_us if self.even_us > 0 else math.nan


def expected(model: MoEModel, cluster: Cluster, profile: Profile, knobs: Knobs, order: list[str],
             loads: list[StepLoad], chunk_loads: bool = False) -> Expected:
    """The plan replayed under each of ``loads`` (and under even routing); ``chunk_loads``:
    see :func:`step_timeline`."""
    even = simulate(build(model, cluster, profile, knobs), {t: i for i, t in enumerate(order)}, strict=True)
    times = sorted(step_timeline(model, cluster, profile, knobs, order, sl, chunk_loads).makespan_us
                   for sl in loads)
    p90 = times[min(len(times) - 1, math.ceil(0.9 * len(times)) - 1)]
    return Expected(sum(times) / len(times), p90, even.makespan_us, sum(sl.dropped for sl in loads) / len(loads))
