"""Exactness plans for a cluster layout, for ``torchrun -m executor.selfcheck``.

The six reference exactness plans (``results/h200x4/selfcheck/exact*.json``: their models and
knobs, built again for the layout; a hierarchical all-to-all becomes flat on one node) plus
two larger fp32 ones that drop copies over capacity, with chunked attention and uneven
forward/backward degrees. CPU only, any machine, repository root::

    python benchmarks/selfcheck_plans.py --cluster 1x1 --out results/h200x1/selfcheck

Writes ``OUT/exact0.json`` ... ``OUT/exact7.json`` (plan files) and prints one line per plan.
``benchmarks/gpu_exactness.sh`` runs them on the GPUs.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os

from moesched.cluster import Cluster
from moesched.knobs import Knobs
from moesched.plan import Plan

from executor.testplans import make_plan, tiny_model

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results", "h200x4", "selfcheck")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    c = Cluster.parse(a.cluster)
    os.makedirs(a.out, exist_ok=True)
    plans = []
    for path in sorted(glob.glob(os.path.join(TEMPLATES, "exact[0-5].json"))):
        p = Plan.load(path)
        k = p.knobs if c.nodes > 1 else dataclasses.replace(p.knobs, a2a="flat")
        plans.append((p.model, k))
    big = tiny_model(d_model=64, heads=4, seq_len=64, micro_batch=8, ffn_hidden=128, experts=8, top_k=2,
                     capacity_factor=1.0, layers=2)
    plans.append((big, Knobs(r_fwd=(2, 4), r_bwd=(4, 2), at_chunked=True, grad_chunk_bytes=20000,
                             grad_sync="overlap", serialize=False, a2a="flat")))
    plans.append((dataclasses.replace(big, expert_kind="swiglu", shared_experts=1, capacity_factor=None),
                  Knobs(r_fwd=(4, 2), r_bwd=(2, 8), at_chunked=False, grad_chunk_bytes=None,
                        grad_sync="after_backward", serialize=False, a2a="flat")))
    for i, (m, k) in enumerate(plans):
        make_plan(m, c, k).save(os.path.join(a.out, f"exact{i}.json"))
        print(f"exact{i}: {m.layers}L E{m.experts} f={m.capacity_factor} {k}")


if __name__ == "__main__":
    main()
