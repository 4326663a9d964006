"""The task graph of one training step: one builder for simulator, solver and executor.

``build(model, cluster, profile, knobs)`` returns a ``networkx.DiGraph`` whose nodes are
task names (``"L3.F.expert.c1"``) and whose edges are data dependencies. Every node has:

=============  ==============================================================
kind           attn_fwd, shared_fwd, expert_fwd, loss, attn_bwd, shared_bwd, expert_dx,
               expert_dw (compute); dispatch, combine, combine_bwd, dispatch_bwd
               (all-to-all); grad_ar (gradient all-reduce chunk)
layer          layer index (-1 for gradient chunks)
chunk, nchunks chunk index and count; tokens of chunk c are the c-th of ``nchunks``
               equal contiguous ranges of the rank's B*L tokens (samples when attention
               is chunked); an unchunked attention task has chunk 0 of 1
phase          "fwd", "bwd" or "grad"
resource       "compute", "comm_intra" or "comm_inter" (serial resources)
op, scope      for communication: collective and group scope (profile keys); hop
               "intra"/"inter" for the two stages of a hierarchical all-to-all
tokens         tokens of the chunk (compute and all-to-all tasks)
work           FLOPs (compute) or bytes per rank (communication)
duration_us    from the profile, collectives through the cluster model (:mod:`moesched.collectives`)
               on a cluster other than the profiled layout (0.0 when built without a profile)
seq            creation index: a topological order (forward by layer, backward in
               reverse, gradient chunks last)
group, offset_bytes, layers   for grad_ar: "dense" or "expert", byte range start in the
               group's flat gradient buffer (ordered last layer first), layers covered
host_us        µs of host time to issue the task (only when the profile has host costs)
=============  ==============================================================

Graph attributes: model, cluster, knobs, profile (name or None), resources, interference
(compute, comm) and interference_by_op ({collective: (compute, comm)}); host_lag_us,
host_setup_us and host_finish_us when the profile has host costs (:mod:`moesched.host`;
strict simulations then model the host).

``build_compiled(...)`` gives the same graph as a :class:`moesched.sim.Compiled` straight
from the builder's lists, without a DiGraph (the solver builds thousands of graphs; its
``.graph`` makes the DiGraph on first use).
"""
from __future__ import annotations

from collections import OrderedDict

import networkx as nx

from moesched import memory
from moesched.cluster import Cluster, check_setup
from moesched.graphbuild import _FLOPS, COMPUTE, RESOURCES, Builder, chunk_tokens, resource_of, tid
from moesched.host import HostCosts, host_features, step_x
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.sim import Compiled

__all__ = ["COMPUTE", "RESOURCES", "_FLOPS", "add_host_costs", "build", "build_compiled",
           "check_memory", "chunk_tokens", "resource_of", "tid"]


_BODIES: "OrderedDict[tuple, tuple[Profile | None, Builder]]" = OrderedDict()
_BODIES_MAX = 64


def _builder(model: MoEModel, cluster: Cluster, profile: Profile | None, knobs: Knobs, cached: bool) -> Builder:
    """Check the request, then build; with ``cached``, the body comes from (or goes to) a
    per-process cache keyed like :func:`moesched.schedules.base.compiled_graph`'s (the
    profile by identity: profiles are not mutated)."""
    if profile is None:
        cluster.check_model(model.experts)
    else:
        check_setup(model.experts, cluster, profile)
    knobs.check(model.layers, model.tokens, model.micro_batch)
    if not cached:
        return Builder(model, cluster, profile, knobs).body().with_grads(knobs)
    key = (id(profile), model, cluster, knobs.r_fwd, knobs.r_bwd, knobs.at_chunked, knobs.a2a)
    hit = _BODIES.get(key)
    if hit is not None and hit[0] is profile:
        _BODIES.move_to_end(key)
        return hit[1].with_grads(knobs)
    body = Builder(model, cluster, profile, knobs).body()
    _BODIES[key] = (profile, body)
    if len(_BODIES) > _BODIES_MAX:
        _BODIES.popitem(last=False)
    return body.with_grads(knobs)


def build(model: MoEModel, cluster: Cluster, profile: Profile | None, knobs: Knobs) -> nx.DiGraph:
    """Build the task graph of one training step (see the module docstring).

    Raises MoeschedError when the model does not divide over the cluster or the knobs do
    not fit the model.
    """
    g = _builder(model, cluster, profile, knobs, cached=False).digraph()
    if profile is not None and profile.host is not None:
        add_host_costs(g, profile.host, model.shape_key())
    return g


def add_host_costs(g: nx.DiGraph, host: HostCosts, shape: str) -> None:
    """Annotate every task with ``host_us`` (µs of host time to issue it) and the graph with
    ``host_lag_us``, ``host_setup_us`` and ``host_finish_us``: strict simulations then model
    the host (:mod:`moesched.host`)."""
    knobs = g.graph["knobs"]
    for _, a in g.nodes(data=True):
        x, r = host_features(a["kind"], a, knobs, host.x_unit)
        a["host_us"] = host.us(a["kind"], x, r, shape)
    g.graph["host_lag_us"] = host.lag_us
    m: MoEModel = g.graph["model"]
    x = step_x(m.layers, sum(memory.param_counts(m, g.graph["cluster"].ep_size)) * m.bytes_per_elem, host.x_unit)
    g.graph["host_setup_us"] = host.us("step_setup", x, 1, shape)
    g.graph["host_finish_us"] = host.us("step_finish", x, 1, shape)


def build_compiled(model: MoEModel, cluster: Cluster, profile: Profile | None, knobs: Knobs) -> Compiled:
    """The graph of :func:`build`, compiled for the simulator without building a networkx
    DiGraph (the solver's hot path; ``.graph`` builds the DiGraph on first use). Equal to
    ``Compiled(build(...))`` array for array. Graphs differing only in gradient knobs or
    ``serialize`` share their forward and backward tasks (built once per process, the
    profile taken by identity, as :func:`moesched.schedules.base.compiled_graph` does).
    Without the host model's ``host_us`` (the solver's list scheduling ignores the host).
    Raises as :func:`build` does."""
    return _builder(model, cluster, profile, knobs, cached=True).compiled()


def check_memory(model: MoEModel, cluster: Cluster, profile: Profile, zero: int = 0) -> None:
    """Raise MoeschedError (one line naming the binding term) if a rank's memory
    (:func:`moesched.memory.rank_memory`: parameters, gradients, Adam state under ZeRO stage
    ``zero``, activations, all-to-all buffers) exceeds the GPU memory of the profile's
    hardware."""
    memory.check_memory(model, cluster, memory.gpu_memory_bytes(profile.hardware), zero)
