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
duration_us    from the profile (0.0 when built without one)
seq            creation index: a topological order (forward by layer, backward in
               reverse, gradient chunks last)
group, offset_bytes, layers   for grad_ar: "dense" or "expert", byte range start in the
               group's flat gradient buffer (ordered last layer first), layers covered
=============  ==============================================================

Graph attributes: model, cluster, knobs, profile (name or None), resources.
"""
from __future__ import annotations

from typing import Iterable

import networkx as nx

from moesched import work
from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile

COMPUTE = "compute"
RESOURCES = (COMPUTE, "comm_intra", "comm_inter")
A2A_KINDS = ("dispatch", "combine", "combine_bwd", "dispatch_bwd")


def tid(layer: int, phase: str, kind: str, chunk: int, hop: str | None = None) -> str:
    """Task name, e.g. ``L3.F.dispatch.c1`` or ``L3.B.dispatch_bwd.c0.inter``."""
    p = {"fwd": "F", "bwd": "B"}[phase]
    return f"L{layer}.{p}.{kind}.c{chunk}" + (f".{hop}" if hop else "")


def resource_of(scope: str) -> str:
    return "comm_intra" if scope == "intra" else "comm_inter"


def chunk_tokens(tokens: int, nchunks: int) -> list[int]:
    """Token counts of ``nchunks`` contiguous ranges (equal; the knobs demand divisibility)."""
    base, extra = divmod(tokens, nchunks)
    return [base + (1 if c < extra else 0) for c in range(nchunks)]


class _Builder:
    def __init__(self, model: MoEModel, cluster: Cluster, profile: Profile | None, knobs: Knobs):
        self.m, self.c, self.p, self.k = model, cluster, profile, knobs
        self.g = nx.DiGraph(model=model, cluster=cluster, knobs=knobs,
                            profile=None if profile is None else profile.name, resources=RESOURCES,
                            interference=(1.0, 1.0) if profile is None else
                            (profile.compute_slowdown, profile.comm_slowdown))
        self.seq = 0
        self.shape = model.shape_key()

    def add(self, name: str, deps: Iterable[str], **attrs: object) -> str:
        kind = attrs["kind"]
        if self.p is None or kind == "loss":
            dur = 0.0
        elif attrs["resource"] == COMPUTE:
            dur = self.p.compute_us(str(kind), float(attrs["work"]), self.shape)
        else:
            dur = self.p.comm_us(str(attrs["op"]), str(attrs["scope"]), float(attrs["work"]))
        self.g.add_node(name, seq=self.seq, duration_us=dur, **attrs)
        self.seq += 1
        for d in deps:
            self.g.add_edge(d, name)
        return name

    def compute(self, name: str, deps: Iterable[str], kind: str, layer: int, chunk: int, nchunks: int,
                phase: str, tokens: int, flops: float) -> str:
        return self.add(name, deps, kind=kind, layer=layer, chunk=chunk, nchunks=nchunks, phase=phase,
                        resource=COMPUTE, tokens=tokens, work=flops)

    def a2a(self, kind: str, deps: list[str], layer: int, chunk: int, nchunks: int, phase: str,
            tokens: int, forward_order: bool) -> str:
        """One all-to-all, or its two hops when hierarchical. ``forward_order``: intra hop
        first (dispatch direction), else inter hop first (combine direction)."""
        nbytes = work.a2a_bytes(self.m, tokens)
        scope = self.c.scope("ep")
        common = dict(kind=kind, layer=layer, chunk=chunk, nchunks=nchunks, phase=phase, op="all_to_all",
                      tokens=tokens, work=nbytes)
        if self.k.a2a == "flat" or self.c.nodes == 1 or scope == "intra":
            return self.add(tid(layer, phase, kind, chunk), deps, resource=resource_of(scope), scope=scope,
                            **common)
        hops = ("intra", "inter") if forward_order else ("inter", "intra")
        last = deps
        for hop in hops:
            name = self.add(tid(layer, phase, kind, chunk, hop), last, resource=resource_of(hop), scope=hop,
                            hop=hop, **common)
            last = [name]
        return last[0]

    def build(self) -> nx.DiGraph:
        m, k = self.m, self.k
        L, T = m.layers, m.tokens
        prev_out: list[list[str]] = []  # per chunk: tasks producing layer output
        for l in range(L):
            r = k.r_fwd[l]
            toks = chunk_tokens(T, r)
            if k.at_chunked:
                same = prev_out and len(prev_out) == r
                attn = []
                for c in range(r):
                    deps = prev_out[c] if same else _flat(prev_out)
                    if m.capacity_factor is not None and c:
                        # Capacity ranks copies in token order across chunks (GShard): chunk c's
                        # routing needs the per-expert counts of chunks 0..c-1.
                        deps = deps + [attn[c - 1]]
                    attn.append(self.compute(tid(l, "fwd", "attn_fwd", c), deps, "attn_fwd", l, c, r, "fwd", toks[c],
                                             work.attn_fwd_flops(m, toks[c])))
            else:
                a = self.compute(tid(l, "fwd", "attn_fwd", 0), _flat(prev_out), "attn_fwd", l, 0, 1, "fwd", T,
                                 work.attn_fwd_flops(m, T))
                attn = [a] * r
            out = []
            for c in range(r):
                d = self.a2a("dispatch", [attn[c]], l, c, r, "fwd", toks[c], True)
                e = self.compute(tid(l, "fwd", "expert_fwd", c), [d], "expert_fwd", l, c, r, "fwd", toks[c],
                                 work.expert_fwd_flops(m, toks[c]))
                cb = self.a2a("combine", [e], l, c, r, "fwd", toks[c], False)
                o = [cb]
                if m.shared_experts:
                    o.append(self.compute(tid(l, "fwd", "shared_fwd", c), [attn[c]], "shared_fwd", l, c, r, "fwd",
                                          toks[c], work.shared_fwd_flops(m, toks[c])))
                out.append(o)
            prev_out = out
        # The loss task merges the last layer's output, computes the loss and its gradient
        # (an elementwise step: 0 µs in the simulator). Backward starts from it.
        loss = self.add("loss", _flat(prev_out), kind="loss", layer=L, chunk=0, nchunks=1, phase="fwd",
                        resource=COMPUTE, tokens=T, work=0.0)
        # Backward, last layer first. gout[c]: tasks producing the gradient of layer output c.
        gout: list[list[str]] = [[loss]]
        grad_ready_dense: dict[int, list[str]] = {}
        grad_ready_expert: dict[int, list[str]] = {}
        for l in reversed(range(L)):
            rb = k.r_bwd[l]
            toks = chunk_tokens(T, rb)
            same = len(gout) == rb
            into_attn: list[list[str]] = []
            dws, ready = [], []
            for c in range(rb):
                src = gout[c] if same else _flat(gout)
                cb = self.a2a("combine_bwd", src, l, c, rb, "bwd", toks[c], True)
                dx = self.compute(tid(l, "bwd", "expert_dx", c), [cb], "expert_dx", l, c, rb, "bwd", toks[c],
                                  work.expert_fwd_flops(m, toks[c]))
                # dW reuses the activation gradient that dX computes (g_h = dY W2 * act'(h)).
                dws.append(self.compute(tid(l, "bwd", "expert_dw", c), [dx], "expert_dw", l, c, rb, "bwd", toks[c],
                                        work.expert_fwd_flops(m, toks[c])))
                db = self.a2a("dispatch_bwd", [dx], l, c, rb, "bwd", toks[c], False)
                ins = [db]
                if m.shared_experts:
                    s = self.compute(tid(l, "bwd", "shared_bwd", c), src, "shared_bwd", l, c, rb, "bwd", toks[c],
                                     2 * work.shared_fwd_flops(m, toks[c]))
                    ins.append(s)
                    ready.append(s)
                into_attn.append(ins)
            if k.at_chunked:
                attn = [self.compute(tid(l, "bwd", "attn_bwd", c), into_attn[c], "attn_bwd", l, c, rb, "bwd",
                                     toks[c], work.attn_bwd_flops(m, toks[c])) for c in range(rb)]
                gout = [[a] for a in attn]
            else:
                a = self.compute(tid(l, "bwd", "attn_bwd", 0), _flat(into_attn), "attn_bwd", l, 0, 1, "bwd", T,
                                 work.attn_bwd_flops(m, T))
                attn = [a]
                gout = [[a]]
            grad_ready_dense[l] = attn + ready
            grad_ready_expert[l] = dws
        # The end of backward: the last attention gradients and every expert dW (dW tasks
        # have no other successor, so a priority may run them last).
        last_bwd = (gout[0] if len(gout) == 1 else _flat(gout)) + [t for l in range(L) for t in grad_ready_expert[l]]
        self.grad_chunks("dense", work.dense_grad_bytes(m), grad_ready_dense, self.c.scope("dp"), last_bwd)
        if self.c.expert_dp > 1:
            self.grad_chunks("expert", work.expert_grad_bytes(m, self.c.ep_size), grad_ready_expert,
                             self.c.scope("expert_dp"), last_bwd)
        if k.serialize:
            order = sorted(self.g.nodes, key=lambda n: self.g.nodes[n]["seq"])
            self.g.add_edges_from(zip(order, order[1:]))
        return self.g

    def grad_chunks(self, group: str, bytes_per_layer: int, ready: dict[int, list[str]], scope: str,
                    last_bwd: list[str]) -> None:
        """Cut the group's gradients (last layer first) into chunks of S_p bytes.

        Built directly rather than through :meth:`add`: with small S_p a step has thousands
        of chunks, all but the last of one size, so the cost is looked up once per size."""
        L = self.m.layers
        total = bytes_per_layer * L
        size = total if self.k.grad_chunk_bytes is None else min(self.k.grad_chunk_bytes, total)
        count = -(-total // size)
        res = resource_of(scope)
        dur: dict[int, float] = {}
        nodes: list[tuple[str, dict]] = []
        edges: list[tuple[str, str]] = []
        off = 0
        for i in range(count):
            n = min(size, total - off)
            if n not in dur:
                dur[n] = 0.0 if self.p is None else self.p.comm_us("all_reduce", scope, float(n))
            first, last = off // bytes_per_layer, (off + n - 1) // bytes_per_layer  # positions, last layer first
            layers = tuple(L - 1 - p for p in range(first, last + 1))
            deps = [t for l in layers for t in ready[l]]
            if self.k.grad_sync == "after_backward":  # first chunk waits for all of backward, the rest for it
                deps += last_bwd if i == 0 else [f"G.{group}.k0"]
            name = f"G.{group}.k{i}"
            nodes.append((name, dict(seq=self.seq, duration_us=dur[n], kind="grad_ar", layer=-1, chunk=i,
                                     nchunks=count, phase="grad", resource=res, op="all_reduce", scope=scope,
                                     work=n, group=group, offset_bytes=off, layers=layers, tokens=0)))
            edges.extend((d, name) for d in dict.fromkeys(deps))
            self.seq += 1
            off += n
        self.g.add_nodes_from(nodes)
        self.g.add_edges_from(edges)


def _flat(xs: list[list[str]]) -> list[str]:
    return list(dict.fromkeys(t for x in xs for t in x))


def build(model: MoEModel, cluster: Cluster, profile: Profile | None, knobs: Knobs) -> nx.DiGraph:
    """Build the task graph of one training step (see the module docstring).

    Raises MoeschedError when the model does not divide over the cluster or the knobs do
    not fit the model.
    """
    cluster.check_model(model.experts)
    knobs.check(model.layers, model.tokens, model.micro_batch)
    if profile is not None and (profile.nodes, profile.gpus_per_node) != (cluster.nodes, cluster.gpus_per_node):
        raise MoeschedError(f"profile {profile.name} was measured on {profile.nodes}x{profile.gpus_per_node} "
                            f"but the cluster is {cluster.nodes}x{cluster.gpus_per_node}")
    return _Builder(model, cluster, profile, knobs).build()


def check_memory(model: MoEModel, cluster: Cluster, profile: Profile) -> None:
    """Raise if the model states per rank exceed the GPU memory recorded in the profile."""
    need = model.memory_bytes_per_rank(cluster.ep_size)
    have = int(profile.hardware["gpu_memory_bytes"])
    if need > have:
        raise MoeschedError(f"model {model.name} needs {need / 2**30:.0f} GiB of model states per rank "
                            f"(16 bytes/param, EP={cluster.ep_size}) but a GPU has {have / 2**30:.0f} GiB")
