"""The builder of the training-step graph (:mod:`moesched.graph`): tasks written as columns.

:class:`Builder` writes the forward and backward tasks of one step, then the gradient
chunks of some knobs; :mod:`moesched.graph` checks the request, caches bodies and gives the
two forms (a networkx DiGraph or a :class:`moesched.sim.Compiled`). The task vocabulary
(kinds, resources, names) lives here and in :mod:`moesched.kinds`.
"""
from __future__ import annotations

import bisect
import itertools

import networkx as nx

from moesched import dense as dense_layers
from moesched import work
from moesched.cluster import Cluster, collective_us, comm_model
from moesched.costs.calibrate import saved_copy_us
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.sim import RES_INDEX, Compiled

COMPUTE = "compute"
RESOURCES = (COMPUTE, "comm_intra", "comm_inter")
_PHASE_LETTER = {"fwd": "F", "bwd": "B"}


def tid(layer: int, phase: str, kind: str, chunk: int, hop: str | None = None) -> str:
    """Task name, e.g. ``L3.F.dispatch.c1`` or ``L3.B.dispatch_bwd.c0.inter``."""
    return f"L{layer}.{_PHASE_LETTER[phase]}.{kind}.c{chunk}" + (f".{hop}" if hop else "")


def resource_of(scope: str) -> str:
    return "comm_intra" if scope == "intra" else "comm_inter"


def chunk_tokens(tokens: int, nchunks: int) -> list[int]:
    """Token counts of ``nchunks`` contiguous ranges (equal; the knobs demand divisibility)."""
    return [b - a for a, b in (work.chunk_range(tokens, nchunks, c) for c in range(nchunks))]


#: FLOPs of a compute task of each kind for ``tokens`` tokens (backward: 2x forward).
_FLOPS = {
    "attn_fwd": work.attn_fwd_flops, "attn_bwd": work.attn_bwd_flops,
    "expert_fwd": work.expert_fwd_flops, "expert_dx": work.expert_fwd_flops, "expert_dw": work.expert_fwd_flops,
    # shared_*: also a dense layer's FFN, on moesched.dense.ffn_view
    "shared_fwd": work.shared_fwd_flops, "shared_bwd": lambda m, t: 2 * work.shared_fwd_flops(m, t),
    "loss": work.loss_elements,  # not FLOPs: elements of the merged output (profile.OPTIONAL_COMPUTE_KINDS)
}


class Builder:
    """Writes the tasks as columns (index == creation order == ``seq``): ``names``,
    ``res`` (index into RESOURCES), ``dur`` (µs), ``kind``, ``phase``, ``layer``, ``layers``
    (gradient chunks; None elsewhere) and ``preds`` (predecessor indices, duplicates
    dropped, in the order given). Adjacency is kept in tuples: tuples of ints cost the
    garbage collector nothing once it has seen them, where lists of cached graphs would
    be traversed again and again. Attribute dicts are made on demand (:meth:`attr_dicts`).

    :meth:`body` writes the forward and backward tasks; :meth:`with_grads` copies them and
    adds the gradient chunks of some knobs (graphs differing only in gradient knobs or
    ``serialize`` share one body); :meth:`digraph` and :meth:`compiled` give the two forms."""

    def __init__(self, model: MoEModel, cluster: Cluster, profile: Profile | None, knobs: Knobs):
        self.m, self.c, self.p, self.k = model, cluster, profile, knobs
        self.names: list[str] = []
        self.res: list[int] = []
        self.dur: list[float] = []
        self.kind: list[str] = []
        self.phase: list[str] = []
        self.layer: list[int] = []
        self.layers: list[tuple[int, ...] | None] = []
        self.preds: list[tuple[int, ...]] = []
        self.attrs: list[dict[str, object]] = []  # of the body tasks, without seq and duration_us
        self.succ: list[tuple[int, ...]] = []  # of the body tasks, set by body()
        self.groups: list[tuple[str, int, int, int, int, str]] = []  # group, first index, count, S_p, bytes, scope
        self.ready: dict[str, dict[int, list[int]]] = {}  # gradient group -> layer -> tasks making them
        self.last_bwd: list[int] = []
        self.loss = -1
        self.shape = model.shape_key()
        self.ep_scope = scope = cluster.scope("ep")
        # two-hop all-to-alls (an intra-node hop needs two GPUs in a node to mean anything)
        self.hier = not (knobs.a2a == "flat" or cluster.nodes == 1 or cluster.gpus_per_node == 1 or scope == "intra")
        # (kind, tokens) -> (FLOPs, µs); ("a2a", tokens) -> ((scope, bytes, µs) per hop)
        self.costs: dict[tuple[str, object], tuple] = {}
        # collectives: the profile's per-scope prices on its own layout, else the cluster model
        self.net = None if profile is None else comm_model(cluster, profile)

    def comm_us(self, op: str, scope: str, role: str, nbytes: float) -> float:
        """µs of collective ``op`` with ``nbytes`` per rank over the group ``role`` (see
        :func:`moesched.collectives.cluster_group`) whose profile scope is ``scope``."""
        if self.p is None:
            return 0.0
        if self.net is None:
            if op == "all_to_all":
                return self.p.a2a_us(scope, nbytes, self.shape)
            return self.p.comm_us(op, scope, nbytes)
        return collective_us(self.c, self.p, op, role, nbytes, self.shape)

    def graph_attrs(self) -> dict[str, object]:
        p = self.p
        return dict(model=self.m, cluster=self.c, knobs=self.k, profile=None if p is None else p.name,
                    resources=RESOURCES, interference=(1.0, 1.0) if p is None else
                    (p.compute_slowdown, p.comm_slowdown),
                    interference_by_op={} if p is None else dict(p.interference_by_op))

    def add(self, name: str, deps: list[int], res: int, dur: float, attrs: dict[str, object]) -> int:
        """Append task ``name`` after ``deps`` (indices) on resource index ``res``, lasting
        ``dur`` µs, with attributes ``attrs`` (kind, phase, layer, ...); returns its index."""
        i = len(self.names)
        self.names.append(name)
        self.res.append(res)
        self.dur.append(dur)
        self.kind.append(attrs["kind"])  # type: ignore[arg-type]
        self.phase.append(attrs["phase"])  # type: ignore[arg-type]
        self.layer.append(attrs["layer"])  # type: ignore[arg-type]
        self.layers.append(None)
        self.preds.append(tuple(deps) if len(deps) < 2 else tuple(dict.fromkeys(deps)))
        self.attrs.append(attrs)
        return i

    def compute(self, name: str, deps: list[int], kind: str, layer: int, chunk: int, nchunks: int, phase: str,
                tokens: int, dense_ffn: bool = False) -> int:
        """A compute task of ``kind`` on ``tokens`` tokens; FLOPs and µs looked up once per build.
        ``dense_ffn``: the shared_fwd/shared_bwd task is a dense layer's FFN, priced as the
        shared expert of :func:`moesched.dense.ffn_view`."""
        key = (kind, tokens, True) if dense_ffn else (kind, tokens)
        hit = self.costs.get(key)
        if hit is None:
            m, shape = (dense_layers.ffn_view(self.m), None) if dense_ffn else (self.m, self.shape)
            if shape is None:
                shape = m.shape_key()
            flops = _FLOPS[kind](m, tokens)
            hit = self.costs[key] = (flops, 0.0 if self.p is None else
                                     self.p.compute_us(kind, float(flops), shape, m, self.c.ep_size))
        attrs = {"kind": kind, "layer": layer, "chunk": chunk, "nchunks": nchunks, "phase": phase,
                 "resource": COMPUTE, "tokens": tokens, "work": hit[0]}
        return self.add(name, deps, RES_INDEX[COMPUTE], hit[1], attrs)

    def saved_copy(self, i: int, forward_chunks: int) -> None:
        """Add to expert_dx task ``i``, its layer's first backward chunk (the executor's first
        to run), the copy of the activations the layer's forward chunks saved
        (:func:`moesched.costs.calibrate.saved_copy_us`); also its attribute ``saved_copy_us``."""
        if self.p is None:
            return
        hit = self.costs.get(("saved_copy", forward_chunks))
        if hit is None:
            hit = self.costs[("saved_copy", forward_chunks)] = (saved_copy_us(self.p, self.m, forward_chunks),)
        if hit[0] > 0:
            self.dur[i] += hit[0]
            self.attrs[i]["saved_copy_us"] = hit[0]

    def a2a(self, kind: str, deps: list[int], layer: int, chunk: int, nchunks: int, phase: str,
            tokens: int, forward_order: bool) -> int:
        """One all-to-all, or its two hops when hierarchical, each priced by the profile's
        all-to-all on its scope at the bytes it carries (:func:`moesched.work.a2a_hops`:
        a full send buffer per hop). ``forward_order``: intra hop first (dispatch
        direction), else inter hop first (combine direction)."""
        hit = self.costs.get(("a2a", tokens))
        if hit is None:
            ep, G = self.c.ep_size, self.c.gpus_per_node
            hops = work.a2a_hops(work.a2a_bytes(self.m, tokens), ep // G if self.hier else 1, G if self.hier else ep,
                                 self.ep_scope, self.hier)
            roles = ("ep_intra", "ep_inter") if self.hier else ("ep",)
            hit = self.costs[("a2a", tokens)] = tuple(
                (h.scope, h.buffer_bytes, self.comm_us("all_to_all", h.scope, role, float(h.buffer_bytes)))
                for h, role in zip(hops, roles))
        last = deps
        for scope, nbytes, us in (hit if forward_order else tuple(reversed(hit))):
            hop = scope if self.hier else None
            res = resource_of(scope)
            head = {"resource": res, "scope": scope, "hop": hop} if hop else {"resource": res, "scope": scope}
            head.update(kind=kind, layer=layer, chunk=chunk, nchunks=nchunks, phase=phase, op="all_to_all",
                        tokens=tokens, work=nbytes)
            last = [self.add(tid(layer, phase, kind, chunk, hop), last, RES_INDEX[res], us, head)]
        return last[0]

    def body(self) -> "Builder":
        """Forward, loss and backward tasks (everything but the gradient chunks)."""
        m, k = self.m, self.k
        L, T = m.layers, m.tokens
        prev_out: list[list[int]] = []  # per chunk: tasks producing layer output
        for l in range(L):
            fwd = self.dense_fwd if m.is_dense(l) else self.moe_fwd
            prev_out = fwd(l, k.r_fwd[l], chunk_tokens(T, k.r_fwd[l]), prev_out)
        # The loss task merges the last layer's output, computes the loss and its gradient;
        # 0 µs with a profile that does not measure it. Backward starts from it.
        loss = self.loss = self.compute("loss", _flat(prev_out), "loss", L, 0, 1, "fwd", T)
        # Backward, last layer first. gout[c]: tasks producing the gradient of layer output c.
        gout: list[list[int]] = [[loss]]
        dense: dict[int, list[int]] = {}
        expert: dict[int, list[int]] = {}
        for l in reversed(range(L)):
            bwd = self.dense_bwd if m.is_dense(l) else self.moe_bwd
            gout, dense[l], expert[l] = bwd(l, k.r_bwd[l], chunk_tokens(T, k.r_bwd[l]), gout)
        self.ready = {"dense": dense, "expert": expert}
        # The end of backward: the last attention gradients and every expert dW (dW tasks
        # have no other successor, so a priority may run them last).
        self.last_bwd = (gout[0] if len(gout) == 1 else _flat(gout)) + [t for l in range(L) for t in expert[l]]
        succ: list[list[int]] = [[] for _ in self.names]
        for i, ps in enumerate(self.preds):
            for p in ps:
                succ[p].append(i)
        self.succ = [tuple(s) for s in succ]
        return self

    def moe_fwd(self, l: int, r: int, toks: list[int], prev_out: list[list[int]]) -> list[list[int]]:
        """MoE layer l forward at degree r (chunk c of toks[c] tokens): attention (whole or
        chunked), then per chunk dispatch, experts, combine and the shared experts. Returns,
        per chunk, the tasks producing the layer's output."""
        m, k, T = self.m, self.k, self.m.tokens
        if k.at_chunked:
            same = prev_out and len(prev_out) == r
            attn: list[int] = []
            for c in range(r):
                deps = prev_out[c] if same else _flat(prev_out)
                if m.capacity_factor is not None and c:
                    # Capacity ranks copies in token order across chunks (GShard): chunk c's
                    # routing needs the per-expert counts of chunks 0..c-1.
                    deps = deps + [attn[c - 1]]
                attn.append(self.compute(tid(l, "fwd", "attn_fwd", c), deps, "attn_fwd", l, c, r, "fwd", toks[c]))
        else:
            attn = [self.compute(tid(l, "fwd", "attn_fwd", 0), _flat(prev_out), "attn_fwd", l, 0, 1, "fwd", T)] * r
        out = []
        for c in range(r):
            d = self.a2a("dispatch", [attn[c]], l, c, r, "fwd", toks[c], True)
            e = self.compute(tid(l, "fwd", "expert_fwd", c), [d], "expert_fwd", l, c, r, "fwd", toks[c])
            o = [self.a2a("combine", [e], l, c, r, "fwd", toks[c], False)]
            if m.shared_experts:
                o.append(self.compute(tid(l, "fwd", "shared_fwd", c), [attn[c]], "shared_fwd", l, c, r, "fwd",
                                      toks[c]))
            out.append(o)
        return out

    def moe_bwd(self, l: int, rb: int, toks: list[int], gout: list[list[int]]
                ) -> tuple[list[list[int]], list[int], list[int]]:
        """MoE layer l backward at degree rb from gout (per chunk, the tasks producing the
        gradient of the layer's output): per chunk combine_bwd, expert dX and dW,
        dispatch_bwd and the shared experts, then attention (whole or chunked). Returns the
        gradient of the layer's input per chunk, and the tasks after which the dense and the
        expert gradients of the layer are ready."""
        m, k, T = self.m, self.k, self.m.tokens
        same = len(gout) == rb
        into_attn: list[list[int]] = []
        dws, ready = [], []
        for c in range(rb):
            src = gout[c] if same else _flat(gout)
            cb = self.a2a("combine_bwd", src, l, c, rb, "bwd", toks[c], True)
            dx = self.compute(tid(l, "bwd", "expert_dx", c), [cb], "expert_dx", l, c, rb, "bwd", toks[c])
            if c == 0:
                self.saved_copy(dx, k.r_fwd[l])
            # dW reuses the activation gradient that dX computes (g_h = dY W2 * act'(h)).
            dws.append(self.compute(tid(l, "bwd", "expert_dw", c), [dx], "expert_dw", l, c, rb, "bwd", toks[c]))
            ins = [self.a2a("dispatch_bwd", [dx], l, c, rb, "bwd", toks[c], False)]
            if m.shared_experts:
                s = self.compute(tid(l, "bwd", "shared_bwd", c), src, "shared_bwd", l, c, rb, "bwd", toks[c])
                ins.append(s)
                ready.append(s)
            into_attn.append(ins)
        if k.at_chunked:
            attn = [self.compute(tid(l, "bwd", "attn_bwd", c), into_attn[c], "attn_bwd", l, c, rb, "bwd", toks[c])
                    for c in range(rb)]
            return [[a] for a in attn], attn + ready, dws
        attn = [self.compute(tid(l, "bwd", "attn_bwd", 0), _flat(into_attn), "attn_bwd", l, 0, 1, "bwd", T)]
        return [attn], attn + ready, dws

    def dense_fwd(self, l: int, r: int, toks: list[int], prev_out: list[list[int]]) -> list[list[int]]:
        """Forward of dense layer ``l`` in ``r`` chunks: attention (chunked or not, as in an
        MoE layer), then the dense FFN of each chunk; returns the tasks making each output chunk."""
        T, same = self.m.tokens, prev_out and len(prev_out) == r
        if self.k.at_chunked:
            attn = [self.compute(tid(l, "fwd", "attn_fwd", c), prev_out[c] if same else _flat(prev_out), "attn_fwd",
                                 l, c, r, "fwd", toks[c]) for c in range(r)]
        else:
            attn = [self.compute(tid(l, "fwd", "attn_fwd", 0), _flat(prev_out), "attn_fwd", l, 0, 1, "fwd", T)] * r
        return [[self.compute(tid(l, "fwd", "shared_fwd", c), [attn[c]], "shared_fwd", l, c, r, "fwd", toks[c], True)]
                for c in range(r)]

    def dense_bwd(self, l: int, rb: int, toks: list[int], gout: list[list[int]]
                  ) -> tuple[list[list[int]], list[int], list[int]]:
        """Backward of dense layer ``l`` in ``rb`` chunks: the dense FFN's, then attention's;
        returns (gradient of the layer input per chunk, tasks making its dense gradients, [])."""
        same = len(gout) == rb
        ffn = [self.compute(tid(l, "bwd", "shared_bwd", c), gout[c] if same else _flat(gout), "shared_bwd", l, c, rb,
                            "bwd", toks[c], True) for c in range(rb)]
        if self.k.at_chunked:
            attn = [self.compute(tid(l, "bwd", "attn_bwd", c), [ffn[c]], "attn_bwd", l, c, rb, "bwd", toks[c])
                    for c in range(rb)]
            return [[a] for a in attn], attn + ffn, []
        attn = [self.compute(tid(l, "bwd", "attn_bwd", 0), ffn, "attn_bwd", l, 0, 1, "bwd", self.m.tokens)]
        return [attn], attn + ffn, []

    def with_grads(self, knobs: Knobs) -> "Builder":
        """A builder holding a copy of this body plus the gradient chunks of ``knobs``
        (whose degrees, attention chunking and all-to-all kind are this body's)."""
        b = Builder.__new__(Builder)
        b.__dict__.update(self.__dict__)
        b.k, b.groups = knobs, []
        for col in ("names", "res", "dur", "kind", "phase", "layer", "layers", "preds"):
            setattr(b, col, list(getattr(self, col)))
        m, c = self.m, self.c
        b.grad_chunks("dense", dense_layers.grad_bytes_per_layer(m, "dense", c.ep_size), c.scope("dp"), "dp")
        if c.expert_dp > 1:
            b.grad_chunks("expert", dense_layers.grad_bytes_per_layer(m, "expert", c.ep_size), c.scope("expert_dp"),
                          "expert_dp")
        return b

    def grad_chunks(self, group: str, bytes_per_layer: list[int], scope: str, role: str) -> None:
        """Cut the group's gradients (``bytes_per_layer[l]`` of layer l, laid out last layer
        first; layers of 0 bytes hold none) into chunks of S_p bytes.

        With small S_p a step has thousands of chunks, all but the last of one size: the
        cost is looked up once per size and the dependencies once per range of layers
        (chunks of one range share one tuple)."""
        held = [l for l in reversed(range(self.m.layers)) if bytes_per_layer[l]]  # layers in buffer order
        ends = list(itertools.accumulate(bytes_per_layer[l] for l in held))  # end offset of each
        total = ends[-1]
        size = total if self.k.grad_chunk_bytes is None else min(self.k.grad_chunk_bytes, total)
        count = -(-total // size)
        size_last = total - (count - 1) * size
        ready = self.ready[group]
        cost = {n: self.comm_us("all_reduce", scope, role, float(n)) for n in dict.fromkeys((size, size_last))}
        spans: dict[tuple[int, int], tuple[tuple[int, ...], tuple[int, ...]]] = {}
        per = []  # (layers, predecessors) of each chunk
        for i in range(count):
            off = i * size
            # positions (in buffer order) of the layers of the chunk's first and last byte
            first = bisect.bisect_right(ends, off)
            last = bisect.bisect_right(ends, off + (size if i < count - 1 else size_last) - 1)
            hit = spans.get((first, last))
            if hit is None:
                layers = tuple(held[p] for p in range(first, last + 1))
                hit = spans[(first, last)] = (layers, tuple(dict.fromkeys(t for l in layers for t in ready[l])))
            per.append(hit)
        k0 = len(self.names)
        self.names += [f"G.{group}.k{i}" for i in range(count)]
        self.dur += [cost[size]] * (count - 1) + [cost[size_last]]
        self.layers += [h[0] for h in per]
        if self.k.grad_sync == "after_backward":  # first chunk waits for all of backward, the rest for it
            self.preds.append(tuple(dict.fromkeys(per[0][1] + tuple(self.last_bwd))))
            self.preds += [tuple(dict.fromkeys(h[1] + (k0,))) for h in per[1:]]
        else:
            self.preds += [h[1] for h in per]
        self.res += [RES_INDEX[resource_of(scope)]] * count
        self.kind += ["grad_ar"] * count
        self.phase += ["grad"] * count
        self.layer += [-1] * count
        self.groups.append((group, k0, count, size, total, scope))

    def attr_dicts(self) -> list[dict[str, object]]:
        """Every task's attribute dict (the DiGraph's node data; see the module docstring)."""
        out = [{"seq": i, "duration_us": self.dur[i], **a} for i, a in enumerate(self.attrs)]
        for group, k0, count, size, total, scope in self.groups:
            res = resource_of(scope)
            for i in range(count):
                j, off = k0 + i, i * size
                out.append(dict(seq=j, duration_us=self.dur[j], kind="grad_ar", layer=-1, chunk=i, nchunks=count,
                                phase="grad", resource=res, op="all_reduce", scope=scope, work=min(size, total - off),
                                group=group, offset_bytes=off, layers=self.layers[j], tokens=0))
        return out

    def digraph(self) -> nx.DiGraph:
        """The tasks as a networkx DiGraph. With ``serialize`` the chain edges come after
        every data edge, as a step-by-step build adds them."""
        g = nx.DiGraph(**self.graph_attrs())
        names = self.names
        g.add_nodes_from(zip(names, self.attr_dicts()))
        g.add_edges_from((names[p], names[i]) for i, ps in enumerate(self.preds) for p in ps)
        if self.k.serialize:
            g.add_edges_from(zip(names, names[1:]))
        return g

    def compiled(self) -> Compiled:
        """The tasks compiled for the simulator without a DiGraph (made from the same
        columns on first use of ``Compiled.graph``): equal to ``Compiled(digraph())``."""
        n, nb = len(self.names), len(self.succ)
        preds = self.preds
        succ = self.succ + [()] * (n - nb)
        extra: dict[int, list[int]] = {}  # successors among the gradient chunks
        i = nb
        while i < n:  # by runs of chunks sharing one predecessor tuple
            ps, j = preds[i], i + 1
            while j < n and preds[j] is ps:
                j += 1
            for p in ps:
                extra.setdefault(p, []).extend(range(i, j))
            i = j
        for p, xs in extra.items():
            succ[p] = succ[p] + tuple(xs)
        if self.k.serialize:  # chain edges j -> j+1 after the data edges (new ones only)
            preds = list(preds)
            for j in range(n - 1):
                if j not in preds[j + 1]:
                    preds[j + 1] = preds[j + 1] + (j,)
                    succ[j] = succ[j] + (j + 1,)
        return Compiled.from_columns(
            names=self.names, res=self.res, dur=self.dur, kind=self.kind, phase=self.phase, layer=self.layer,
            layers=self.layers, preds=preds, succ=succ, loss=self.loss, graph_attrs=self.graph_attrs(),
            make_attrs=self.attr_dicts, make_graph=self.digraph)


def _flat(xs: list[list[int]]) -> list[int]:
    return list(dict.fromkeys(t for x in xs for t in x))
