"""FSMoE: per-layer forward/backward degrees from a four-case pipeline model, gradient
all-reduce partitioned into the backward windows where the link would idle.

FSMoE (ASPLOS'25) Sec. 2.3 (Algorithm 1) picks r per layer and phase from four
closed-form makespans guarded by predicates Q1..Q7; Sec. 2.4 assigns gradient bytes to
each layer's overlappable window t_olp greedily in backward order. Our layouts have no
ESP groups, so t_ag = t_rs = 0; the link is the one the all-to-all uses.
Simplifications: r in {1,2,4,8} by enumeration (the code's rounding set) instead of
SLSQP; no "r=1 if the unchunked A2A < 1 ms" rule; gradients move in equal whole chunks
(the graph's S_p); Step 2 (differential evolution over the un-hidden remainder) is
replaced by picking S among three sizes by that remainder, which is reduced after
backward; r_bwd is re-solved once with the t_gar each layer received.
"""
from __future__ import annotations

from moesched.cluster import Cluster, collective_us
from moesched.knobs import Knobs
from moesched.models import MoEModel
from moesched.profile import Profile
from moesched.schedules.base import Schedule
from moesched.schedules.priorities import (MAX_GRAD_CHUNKS, ar_bytes_within, degrees,
                                           grad_groups, t_a2a_us, t_attn_bwd_us, t_exp_us, theorem1,
                                           window_priority)

NAME = "fsmoe"
PAPER = "FSMoE, Pan et al., ASPLOS'25 (arXiv 2501.10714)"
SUMMARY = "per-layer r_fwd/r_bwd from the four-case model over {1,2,4,8}, gradients placed in backward idle windows"

#: FSMoE's rounding set (tools/optim.py upper/downer tables).
DEGREES = (1, 2, 4, 8)


def case_times(r: int, ta: float, te: float, tag: float = 0.0, trs: float = 0.0, tgar: float = 0.0) -> dict[int, float]:
    """Makespans (µs) of the cases whose region holds at degree r, from per-chunk times
    t_a2a, t_exp, t_ag, t_rs and the layer's t_gar (FSMoE Sec. 2.3, predicates Q1..Q7,
    cases 1-4)."""
    q1 = ta > tag
    q2 = r * te > 2 * (r - 1) * ta
    q3 = r * te > (r - 1) * (tag + trs)
    q4 = tgar > tag + trs
    q5 = tgar > r * te - 2 * (r - 1) * ta + tag + trs
    q6 = tgar > r * tag + r * trs - 2 * (r - 1) * ta
    q7 = tgar > tag + trs + r * te - 2 * (r - 1) * ta
    region = {1: (q1 and not q2 and q4) or (q1 and q2 and q5) or (not q1 and not q3 and q6) or (not q1 and q3 and q7),
              2: (q1 and q2 and not q5) or (not q1 and q3 and not q7),
              3: q1 and not q2 and not q4,
              4: not q1 and not q3 and not q6}
    value = {1: 2 * r * ta + tgar, 2: 2 * ta + tag + trs + r * te, 3: 2 * r * ta + tag + trs,
             4: 2 * ta + r * tag + r * trs}
    return {c: value[c] for c in (1, 2, 3, 4) if region[c]}


def t_olp_moe(case: int, r: int, ta: float, te: float, tag: float = 0.0, trs: float = 0.0) -> float:
    """MoE part of a layer's overlappable window, µs (FSMoE Sec. 2.4 step 1(2)); case 1
    is link bound already: no window."""
    return {1: 0.0, 2: r * te + tag + trs - 2 * (r - 1) * ta, 3: tag + trs,
            4: r * tag + r * trs - 2 * (r - 1) * ta}[case]


def best(model: MoEModel, cluster: Cluster, profile: Profile, backward: bool, tgar: float = 0.0) -> tuple[int, int, float]:
    """(r, case, makespan µs) minimising Algorithm 1 over r in {1,2,4,8} dividing the
    tokens; constraint-violating cases are dropped; ties go to the smaller r."""
    out = []
    for r in degrees(model, DEGREES):
        ta, te = t_a2a_us(model, cluster, profile, r), t_exp_us(model, profile, r, backward)
        out += [(v, r, c) for c, v in case_times(r, ta, te, tgar=tgar).items()]
    v, r, c = min(out)
    return r, c, v


def schedule(model: MoEModel, cluster: Cluster, profile: Profile) -> Schedule:
    """r_fwd (t_gar=0), then backward: solve with t_gar=0, size and place gradient chunks
    in the windows t_olp = t_attn_bwd + t_olp,moe, re-solve each layer's r_bwd with the
    t_gar it received (the part its attention backward cannot hide)."""
    L = model.layers
    rf, _, _ = best(model, cluster, profile, backward=False)
    rb0, case, _ = best(model, cluster, profile, backward=True)
    ta, te = t_a2a_us(model, cluster, profile, rb0), t_exp_us(model, profile, rb0, True)
    t_dense, t_moe = t_attn_bwd_us(model, profile), t_olp_moe(case, rb0, ta, te)
    # Chunk size S: the bytes one all-reduce moves in the smallest idle gap of a window (one
    # expert chunk's gap t_olp,moe/r, or the attention backward), in a whole window, or one
    # layer's gradients; keep the S whose un-hidden remainder (reduced after backward, one
    # startup cost per chunk) is shortest -- our stand-in for FSMoE's Step 2.
    gap = min((x for x in (t_dense, t_moe / rb0) if x > 0), default=0.0)
    olp = [t_dense + t_moe] * L
    groups = grad_groups(model, cluster)
    sizes = {ar_bytes_within(cluster, profile, "dp", t, sum(b * L for _, b, _ in groups)) for t in (gap, olp[0])}
    sizes |= {max(b for _, b, _ in groups)}
    plans = [partition(model, cluster, profile, olp, s) for s in sorted(x for x in sizes if x > 0)]
    chunk, window, tgar, n, rem = min(plans, key=lambda p: (p[4], p[3], p[0]))
    rb = tuple(best(model, cluster, profile, True, max(0.0, tgar[l] - t_dense))[0] for l in range(L))
    knobs = Knobs((rf,) * L, rb, grad_chunk_bytes=chunk, grad_sync="overlap", a2a="flat")
    notes = {"r_fwd": rf, "r_bwd": list(rb), "bwd_case": case, "grad_chunk_bytes": knobs.grad_chunk_bytes,
             "t_olp_us": round(t_dense + t_moe, 3), "chunks_in_windows": len(window),
             "chunks_after_backward": n - len(window), "unhidden_ar_us": round(rem, 3)}
    return Schedule(NAME, knobs, theorem1(window_priority(window)), notes)


def partition(model: MoEModel, cluster: Cluster, profile: Profile, t_olp_us: list[float],
              s: int) -> tuple[int, dict[str, int], list[float], int, float]:
    """FSMoE Sec. 2.4 step 1(3)-(4) with whole chunks: cut every gradient group into
    chunks of s bytes (as moesched.graph cuts them, last layer first), then walk the
    windows in backward order, giving each window j the oldest chunks whose gradients
    exist before layer j's backward while their t_ar fits in t_olp_us[j]; the rest carries
    over (Eqs. 3-4). Returns (S, chunk task -> window layer, t_gar µs per layer, number of
    chunks, µs of all-reduce left after backward)."""
    L, groups = model.layers, grad_groups(model, cluster)
    s = max(s, -(-sum(b * L for _, b, _ in groups) // MAX_GRAD_CHUNKS))
    chunks = []  # (last position covered, group, index, task, t_ar µs); position 0 = layer L-1
    for gi, (grp, per_layer, scope) in enumerate(groups):
        size, off, i = min(s, per_layer * L), 0, 0
        while off < per_layer * L:
            n = min(size, per_layer * L - off)
            chunks.append(((off + n - 1) // per_layer, gi, i, f"G.{grp}.k{i}", collective_us(cluster, profile, "all_reduce", "dp" if grp == "dense" else "expert_dp", n)))
            off, i = off + n, i + 1
    chunks.sort()
    window: dict[str, int] = {}
    tgar, q = [0.0] * L, 0
    for j in reversed(range(L)):
        budget = t_olp_us[j]
        while q < len(chunks) and L - 1 - chunks[q][0] > j and chunks[q][4] <= budget:
            budget -= chunks[q][4]
            tgar[j] += chunks[q][4]
            window[chunks[q][3]] = j
            q += 1
    return s, window, tgar, len(chunks), sum(c[4] for c in chunks[q:])
