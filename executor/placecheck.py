"""Exactness check of replicated and moved experts (:mod:`executor.placement`) against the reference.

``torchrun --nproc_per_node=N -m executor.placecheck --out r.jsonl`` trains a tiny model for
``--steps`` steps with Adam on gloo, starting from static expert parallelism, moving to a
placement with replicas (and moved experts) before step 2, to another before step 4 and
to one that leaves rank 1 without experts before step 5, and compares after every step the loss, the reduced gradients, the parameters and the
Adam moments of every expert this rank holds, and the dense ones, with
:class:`executor.layers.ReferenceModel` trained on all ranks' batches with all experts and
never moved. Rank 0 appends one JSON line per model: {"model", "ok", "max_abs_err",
"worst", "copied"}. ``--bad`` applies a placement that names an expert twice on one rank
instead: one ``moesched: error:`` line and exit 2 on every rank. ``--split`` follows
:func:`split_schedule` instead of :func:`schedule`: experts split over ranks (hidden-dimension
shards of an H of 30, compared with the reference's slice), made whole again and
resharded. ``--schedule FILE`` follows
a placement schedule written by ``moesched placement --schedule-out`` (tiny models with its
experts and layers, at least two steps past its last change; the job's world must be its
ranks). Exit status 0 when every model matches, 1 when one does not.
"""
from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

from moesched.placement import Placement
from moesched.placement_schedule import PlacementSchedule

from executor import errors
from executor.layers import ReferenceModel, make_batch
from executor.placement import PlacedMoE, _names, hidden_slice
from executor.placement_step import PlacedStep
from executor.placerun import LR, change_before, placed_adam
from executor.run import rank_and_world
from executor.testplans import tiny_model

#: Steps before which the placement changes (to the 2nd, 3rd, 4th of :func:`schedule`).
CHANGES = (2, 4, 5)


def schedule(experts: int, world: int) -> list[Placement]:
    """Static EP; then expert 0 on every rank and the others shifted by one rank; then
    experts 0 and 1 replicated on two ranks each, the rest back to static; then rank 1
    empty (its experts on rank 0) and, beyond two ranks, expert 0 also on the last."""
    per = experts // world
    slots = per + 2
    static = Placement.static(experts, world, slots)
    shifted = Placement.of([list(range(world)) if e == 0 else [(e // per + 1) % world] for e in range(experts)],
                           world, slots)
    two = Placement.of([[0, world - 1] if e in (0, 1) else [e // per] for e in range(experts)], world, slots)
    empty = Placement.of([[0 if e // per == 1 else e // per] + ([world - 1] if e == 0 and world > 2 else [])
                          for e in range(experts)], world, slots)
    return [static, shifted, two, empty]


def split_schedule(experts: int, world: int) -> list[Placement]:
    """Static EP; then expert 0 split over ranks 0, 1 (rank 1's static experts stay) and
    expert 3 replicated on its rank and the next; then expert 0 whole on rank 1 and expert
    2 split over all ranks; then expert 2 resharded over the last two ranks (on 2 ranks:
    whole again on rank 0) and expert 1 split over ranks 0, 1."""
    per = experts // world
    slots = per + 3
    home = [e // per for e in range(experts)]
    static = Placement.static(experts, world, slots)
    a = Placement.of([[0, 1] if e == 0 else [home[3], (home[3] + 1) % world] if e == 3 else [home[e]]
                      for e in range(experts)], world, slots, split=[0])
    b = Placement.of([[1] if e == 0 else list(range(world)) if e == 2 else [home[e]] for e in range(experts)],
                     world, slots, split=[2])
    last = [world - 2, world - 1] if world > 2 else [0]
    c = Placement.of([[1] if e == 0 else last if e == 2 else [0, 1] if e == 1 else [home[e]]
                      for e in range(experts)], world, slots, split=[1, 2] if world > 2 else [1])
    return [static, a, b, c]


def builtin(m, world: int, split: bool = False) -> PlacementSchedule:
    """:func:`schedule` (or :func:`split_schedule`) for every layer of ``m``, changing before
    the steps of :data:`CHANGES`."""
    plcs = (split_schedule if split else schedule)(m.experts, world)
    return PlacementSchedule("builtin", tuple((s, (p,) * m.layers) for s, p in zip((0,) + CHANGES, plcs)))


def check(label: str, m, rank: int, world: int, steps: int, tol: float, sched: PlacementSchedule) -> dict:
    step, opt = placed_adam(m, sched.changes[0][1], rank, world, seed=5)
    mod = step.model
    ref = ReferenceModel(m, seed=5)
    ref_opt = torch.optim.Adam(list(ref.module.parameters()), lr=LR)
    worst, name, ok, copied = 0.0, "", True, 0
    for s in range(steps):
        copied += change_before(step, opt, sched, s) or 0
        bs = [make_batch(m, r, seed=100 + s) for r in range(world)]
        loss = float(step(*bs[rank]))
        rl = ref.loss([b[0] for b in bs], [b[1] for b in bs])
        rl.backward()
        pairs = [("loss", torch.tensor(loss), rl.detach())]
        pairs += _pairs(mod, ref, "grad", lambda p: p.grad)
        opt.step()
        ref_opt.step()
        opt.zero_grad(set_to_none=False)
        ref_opt.zero_grad(set_to_none=False)
        pairs += _pairs(mod, ref, "param", lambda p: p.detach())
        for key in ("exp_avg", "exp_avg_sq"):
            pairs += _pairs(mod, ref, key, lambda p, k=key: opt.state[p][k],
                            lambda p, k=key: ref_opt.state[p][k])
        for n, a, b in pairs:
            err = float((a - b).abs().max())
            ok &= bool(torch.allclose(a, b, rtol=tol, atol=tol))
            if err >= worst:
                worst, name = err, f"step{s}.{n}"
    flag = torch.tensor([0.0 if ok else 1.0, worst])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return {"model": label, "ok": flag[0].item() == 0.0, "max_abs_err": flag[1].item(), "worst": name,
            "copied": copied}


def _pairs(mod: PlacedMoE, ref: ReferenceModel, what: str, get, get_ref=None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, this rank's tensor, the reference's) of every dense parameter and held expert."""
    get_ref = get_ref or get
    out = []
    for l, (mine, theirs) in enumerate(zip(mod.blocks, ref.module.blocks)):
        out += [(f"L{l}.dense{i}.{what}", get(a), get_ref(b)) for i, (a, b) in
                enumerate(zip(mine.dense_params(), theirs.dense_params()))]
        plc = mod.placements[l]
        for e in plc.held()[mod.rank]:
            lo, hi = plc.shard_range(e, mod.rank, mod.cfg.ffn_hidden)  # a split expert: the reference's slice
            out += [(f"L{l}.e{e}.{n}.{what}", get(a), hidden_slice(n, get_ref(b)[e], lo, hi)) for n, a, b in
                    zip(_names(mod.cfg), mod.expert(l, e), theirs.expert_params())]
    return out


def _main(argv: list[str] | None) -> int:
    ap = errors.ArgParser(prog="python -m executor.placecheck")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--bad", action="store_true", help="apply a placement naming an expert twice on a rank")
    ap.add_argument("--split", action="store_true",
                    help="the built-in schedule with split experts (hidden-dimension shards) instead")
    ap.add_argument("--schedule", default=None,
                    help="follow this placement schedule (moesched placement --schedule-out) instead of the built-in one")
    a = ap.parse_args(argv)
    rank, world = rank_and_world()
    given = PlacementSchedule.load(a.schedule) if a.schedule else None
    if given is not None:
        given.check_job(world, where=f"placement schedule {a.schedule}")
    torch.manual_seed(0)
    dist.init_process_group("gloo")
    try:
        shape = dict(experts=given.experts, layers=given.layers) if given else dict(experts=2 * world)
        if a.split:
            shape["ffn_hidden"] = 30  # uneven shards over 4 ranks (8, 8, 7, 7), 15 + 15 over 2
        models = [("swiglu-shared", tiny_model(**shape, expert_kind="swiglu", shared_experts=1)),
                  ("gelu-capacity", tiny_model(**shape, capacity_factor=1.0))]
        if a.bad:
            m = models[0][1]
            mod = PlacedMoE(m, [Placement.static(m.experts, world, 3)] * m.layers, rank, world)
            bad = Placement.trusted(((0, 0),) + ((1,),) * (m.experts - 1), world, 3)
            PlacedStep(mod).apply_placement([bad] * m.layers)
        good = True
        for label, m in models:
            sched = given or builtin(m, world, a.split)
            steps = max(a.steps, sched.changes[-1][0] + 2) if given else a.steps
            r = check(label, m, rank, world, steps, a.tol, sched)
            good &= r["ok"]
            if rank == 0:
                with open(a.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
        dist.barrier()
        return 0 if good else 1
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    return errors.guarded(lambda: _main(argv), in_collectives=False)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    errors.exit_now(main())
