"""The PPMoE layout's share of the solver's search (issue 23 part 3), so that the EP-vs-PPMoE
comparison of :mod:`moesched.layoutchoice` is not biased towards EP (whose schedule the
solver searches while PPMoE's was simulated in creation order only):

* :func:`index_copy_us`: the price of PPMoE's index slicing and index assignment (Chen et
  al., "Pipeline MoE", §3.3 (iii), (iv)): a rank gathers its T*k routed rows (read +
  write) and writes the weighted outputs back (read + write), forward; the backward
  slices the output gradient and assigns dX alike. Memory-bound: bytes / HBM bandwidth
  (the GPU's data-sheet bandwidth, an upper bound on speed: a lower bound on time);
* :func:`search_priority`: a small search over list-scheduling priorities of the layout
  graph: creation order, TP collectives before gradient all-reduces on the shared link,
  the experts' dW deferred behind the next layer's critical path, and both; the fastest
  wins (ties: the first).
"""
from __future__ import annotations

from collections.abc import Callable

import networkx as nx

from moesched.kinds import TP_COMM_KINDS
from moesched.layouts import Layout
from moesched.models import MoEModel
from moesched.sim import Timeline, simulate

#: Data-sheet HBM bandwidth, bytes per µs (H200 4.8 TB/s, H100 SXM 3.35 TB/s, A100 80 GB
#: 2.0 TB/s, B200 8 TB/s); unknown GPUs use the H200's.
HBM_BYTES_PER_US = {"NVIDIA H200": 4.8e6, "NVIDIA H100": 3.35e6, "NVIDIA A100": 2.0e6, "NVIDIA B200": 8.0e6}
#: Bytes moved per routed row of M elements: slice (read + write) and assign (read + write).
COPY_PASSES = 4


def hbm_bytes_per_us(hardware: dict) -> float:
    """HBM bandwidth (bytes/µs) of the profile's GPU (:data:`HBM_BYTES_PER_US`)."""
    gpu = str(hardware.get("gpu", "")).lower()
    for name, bw in HBM_BYTES_PER_US.items():
        if name.lower() in gpu:
            return bw
    return HBM_BYTES_PER_US["NVIDIA H200"]


def index_copy_bytes(model: MoEModel, layout: Layout) -> int:
    """Bytes one rank's index slice + assign move per pass (forward, or backward): T*k
    routed rows (even routing: a TP rank holds E/t experts of Tg = t*T tokens) of M
    elements, :data:`COPY_PASSES` times. 0 for the EP layout (tp == 1: no slicing)."""
    if layout.tp == 1:
        return 0
    return COPY_PASSES * model.tokens * model.top_k * model.d_model * model.bytes_per_elem


def index_copy_us(model: MoEModel, layout: Layout, hardware: dict) -> float:
    """µs of one pass of index copies: :func:`index_copy_bytes` / HBM bandwidth."""
    return index_copy_bytes(model, layout) / hbm_bytes_per_us(hardware)


def _priorities(g: nx.DiGraph) -> dict[str, Callable[[str], float]]:
    """Candidate priorities (lower first), by name; offsets past every seq move a task
    behind all others that are ready at the same time."""
    n = float(len(g))
    seq = {t: float(d["seq"]) for t, d in g.nodes(data=True)}

    def grads_last(t: str) -> float:
        return seq[t] + (n if g.nodes[t]["kind"] == "grad_ar" else 0.0)

    def dw_late(t: str) -> float:
        return seq[t] + (n if g.nodes[t]["kind"] == "expert_dw" else 0.0)

    def tp_first(t: str) -> float:
        k = g.nodes[t]["kind"]
        return seq[t] + (2 * n if k == "grad_ar" else n if k == "expert_dw" else 0.0) - \
            (n if k in TP_COMM_KINDS else 0.0)
    return {"seq": seq.__getitem__, "grads-last": grads_last, "dw-late": dw_late, "tp-first": tp_first}


def search_priority(g: nx.DiGraph) -> tuple[Timeline, str]:
    """The fastest list schedule of layout graph ``g`` over :func:`_priorities` and its name."""
    best: tuple[Timeline, str] | None = None
    for name, prio in _priorities(g).items():
        tl = simulate(g, {t: prio(t) for t in g.nodes})
        if best is None or tl.makespan_us < best[0].makespan_us:
            best = (tl, name)
    assert best is not None
    return best
