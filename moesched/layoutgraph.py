"""The task graph of one training step under a PPMoE layout (:mod:`moesched.layouts`).

Every rank of a TP group runs the same tasks on its shard, so the graph is one rank's view
(SPMD, no roles) and :func:`moesched.sim.simulate` simulates it. Per layer l (names as
:func:`moesched.graph.tid`, the collective's place as the suffix ``attn`` / ``moe``):

forward   attn_fwd -> tp_ar.attn -> expert_fwd (+ shared_fwd) -> tp_ar.moe
          (a dense layer: shared_fwd, its dense FFN split t ways as Megatron's TP MLP, for the experts)
          (sequence parallel: tp_ag.attn -> attn_fwd -> tp_rs.attn -> tp_ag.moe -> experts -> tp_rs.moe)
backward  expert_dx (+ shared_bwd) -> tp_ar.moe -> attn_bwd -> tp_ar.attn; expert_dw after expert_dx
          (sequence parallel: tp_ag before and tp_rs after each block, the forward's mirror)
gradients one grad_ar per layer and group ("dense" after attn_bwd, "expert" after expert_dw)
          over the DP group of world/t ranks, when there is more than one TP group

Compute is priced by the profile's per-kind costs at the layout's FLOPs (serial experts:
E/t calls of 1/(E/t) the FLOPs each, so each pays the call's fixed cost); collectives by
:func:`moesched.cluster.collective_us` on the TP group (group "ep" of the layout's
cluster, :func:`moesched.layouts.tp_cluster`) and the DP group ("expert_dp"). expert_fwd and
expert_dx also pay the index slice/assign copies (:func:`moesched.layoutsearch.index_copy_us`).
"""
from __future__ import annotations

import networkx as nx

from moesched import dense as dense_layers
from moesched import work
from moesched.cluster import Cluster, collective_us
from moesched.graph import build as build_ep
from moesched.graph import tid
from moesched.kinds import TP_OP_OF_KIND
from moesched.knobs import Knobs
from moesched.layouts import (Layout, attn_fwd_flops, check_layout, expert_calls, layer_param_counts, tp_bytes,
                              tp_cluster)
from moesched.layoutsearch import index_copy_us
from moesched.models import MoEModel
from moesched.profile import Profile


class _LayoutBuilder:
    """Adds tasks to a DiGraph in creation order (``seq``) with their µs."""

    def __init__(self, model: MoEModel, cluster: Cluster, profile: Profile | None, layout: Layout) -> None:
        self.m, self.p, self.lay = model, profile, layout
        self.c = tp_cluster(cluster, layout)
        self.g = nx.DiGraph(model=model, cluster=cluster, layout=layout, profile=None if profile is None else
                            profile.name, interference=(1.0, 1.0) if profile is None else
                            (profile.compute_slowdown, profile.comm_slowdown),
                            interference_by_op={} if profile is None else dict(profile.interference_by_op))
        self.tp_x = float(tp_bytes(model, layout))
        self.copy_us = 0.0 if profile is None else index_copy_us(model, layout, profile.hardware)

    def add(self, name: str, deps: list[str], kind: str, layer: int, phase: str, resource: str, dur_us: float,
            **attrs: object) -> str:
        self.g.add_node(name, kind=kind, layer=layer, chunk=0, nchunks=1, phase=phase, resource=resource,
                        duration_us=dur_us, seq=len(self.g), **attrs)
        for d in deps:
            self.g.add_edge(d, name)
        return name

    def compute(self, kind: str, layer: int, phase: str, deps: list[str], flops: float, calls: int = 1,
                copy_us: float = 0.0, dense_ffn: bool = False) -> str:
        """A compute task; ``copy_us``: its index slice/assign copies (µs), added to its time;
        ``dense_ffn``: a dense layer's FFN, priced as the shared expert of
        :func:`moesched.dense.ffn_view`."""
        m = dense_layers.ffn_view(self.m) if dense_ffn else self.m
        us = 0.0 if self.p is None else calls * self.p.compute_us(kind, flops, m.shape_key(), m,
                                                                   self.lay.tp) + copy_us
        return self.add(tid(layer, phase, kind, 0), deps, kind, layer, phase, "compute", us, work=flops * calls,
                        calls=calls, copy_us=copy_us)

    def tp(self, kind: str, layer: int, phase: str, where: str, deps: list[str]) -> str:
        op = TP_OP_OF_KIND[kind]
        us = 0.0 if self.p is None else collective_us(self.c, self.p, op, "ep", self.tp_x, self.m.shape_key())
        return self.add(tid(layer, phase, kind, 0, where), deps, kind, layer, phase, "comm_intra", us, op=op,
                        scope="intra", work=self.tp_x)

    def tp_out(self, layer: int, phase: str, where: str, deps: list[str]) -> str:
        """The collective after a TP block: all-reduce, or reduce-scatter (sequence parallel)."""
        return self.tp("tp_rs" if self.lay.sequence_parallel else "tp_ar", layer, phase, where, deps)

    def tp_in(self, layer: int, phase: str, where: str, deps: list[str]) -> list[str]:
        """Before a TP block: the all-gather of sequence parallelism, else nothing."""
        return [self.tp("tp_ag", layer, phase, where, deps)] if self.lay.sequence_parallel else deps

    def forward(self, prev: list[str], layer: int) -> list[str]:
        m, lay = self.m, self.lay
        a = self.compute("attn_fwd", layer, "fwd", self.tp_in(layer, "fwd", "attn", prev), attn_fwd_flops(m, lay))
        x = self.tp_in(layer, "fwd", "moe", [self.tp_out(layer, "fwd", "attn", [a])])
        if m.is_dense(layer):  # Megatron's TP MLP: the dense FFN split t ways on the group's tokens
            ffn = self.compute("shared_fwd", layer, "fwd", x, dense_layers.ffn_fwd_flops(m, m.tokens), dense_ffn=True)
            return [self.tp_out(layer, "fwd", "moe", [ffn])]
        n, f = expert_calls(m, lay)
        outs = [self.compute("expert_fwd", layer, "fwd", x, f, n, self.copy_us)]
        if m.shared_experts:
            outs.append(self.compute("shared_fwd", layer, "fwd", x, work.shared_fwd_flops(m, m.tokens)))
        return [self.tp_out(layer, "fwd", "moe", outs)]

    def backward(self, gout: list[str], layer: int) -> tuple[list[str], str, str]:
        """(gradient of the layer input, task the dense gradients wait for, the experts' dW)."""
        m, lay = self.m, self.lay
        g = self.tp_in(layer, "bwd", "moe", gout)
        if m.is_dense(layer):
            ffn = self.compute("shared_bwd", layer, "bwd", g, 2 * dense_layers.ffn_fwd_flops(m, m.tokens),
                               dense_ffn=True)
            ga = self.tp_in(layer, "bwd", "attn", [self.tp_out(layer, "bwd", "moe", [ffn])])
            ab = self.compute("attn_bwd", layer, "bwd", ga, 2 * attn_fwd_flops(m, lay))
            return [self.tp_out(layer, "bwd", "attn", [ab])], ab, ab
        n, f = expert_calls(m, lay)
        dx = self.compute("expert_dx", layer, "bwd", g, f, n, self.copy_us)
        ins = [dx]
        if m.shared_experts:
            ins.append(self.compute("shared_bwd", layer, "bwd", g, 2 * work.shared_fwd_flops(m, m.tokens)))
        ga = self.tp_in(layer, "bwd", "attn", [self.tp_out(layer, "bwd", "moe", ins)])
        ab = self.compute("attn_bwd", layer, "bwd", ga, 2 * attn_fwd_flops(m, lay))
        out = self.tp_out(layer, "bwd", "attn", [ab])
        return [out], ab, self.compute("expert_dw", layer, "bwd", [dx], f, n)

    def grads(self, layer: int, dense_after: str, expert_after: str) -> None:
        """One all-reduce per layer and group over the DP group (world/t ranks)."""
        if self.c.expert_dp == 1:
            return
        dense, expert = layer_param_counts(self.m, self.lay, layer)
        b = self.m.bytes_per_elem
        for group, n, after in (("dense", dense, dense_after), ("expert", expert, expert_after)):
            if not n:
                continue
            nbytes = float(n * b)
            us = 0.0 if self.p is None else collective_us(self.c, self.p, "all_reduce", "expert_dp", nbytes)
            res = "comm_intra" if self.c.nodes == 1 else "comm_inter"
            self.add(f"G.{group}.L{layer}", [after], "grad_ar", -1, "grad", res, us, op="all_reduce",
                     group=group, layers=(layer,), work=nbytes)


def build(model: MoEModel, cluster: Cluster, profile: Profile | None, layout: Layout) -> nx.DiGraph:
    """The step's task graph under ``layout`` (tp == 1: :func:`moesched.graph.build` with
    one chunk per layer). Raises MoeschedError when the layout does not divide the model."""
    check_layout(model, cluster, layout)
    if layout.tp == 1:
        return build_ep(model, cluster, profile, Knobs.uniform(model.layers, 1))
    b = _LayoutBuilder(model, cluster, profile, layout)
    prev: list[str] = []
    for layer in range(model.layers):
        prev = b.forward(prev, layer)
    gout = [b.add("loss", prev, "loss", model.layers, "fwd", "compute", 0.0 if profile is None else
                  profile.compute_us("loss", work.loss_elements(model, model.tokens * layout.tp) / layout.tp))]
    for layer in reversed(range(model.layers)):
        gout, ab, dw = b.backward(gout, layer)
        b.grads(layer, ab, dw)
    return b.g
