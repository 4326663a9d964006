"""The published layer grids, as one-layer :class:`~moesched.models.MoEModel` lists.

* ``schemoe675``: ScheMoE (EuroSys'24) Table 4, reused by FlowMoE: B in {2,4,8},
  f in {1.0,1.1,1.2}, L in {512,1024,2048}, H in {512..8192, x2}, M in {512..8192, x2};
  E = P = world (one expert per GPU), k = 2, 8 heads, one layer. 3*3*3*5*5 = 675.
* ``fsmoe1458``: FSMoE (ASPLOS'25) Table 4: B in {1,2,4}, heads in {8,16,32},
  L in {512,1024,2048}, M in {1024,2048,4096}, H/M in {2,3,4}, f in {1.2, 2.4, dropless},
  expert FFN in {gpt, swiglu (Mixtral)}; k = 2, E = world. 3^6*2 = 1458. Every layer
  includes its gradient all-reduce (our graphs always do).

dtype is bf16 (the project's H200 default; the papers trained in fp32 on older GPUs).
Entries that cannot run on a cluster (experts not divisible, memory) are filtered by
:func:`feasible`.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.graph import check_memory
from moesched.models import MoEModel
from moesched.profile import Profile

POW2_512_8192 = (512, 1024, 2048, 4096, 8192)


def schemoe675(world: int) -> list[MoEModel]:
    """ScheMoE's 675 layers for ``world`` GPUs (E = world)."""
    out = []
    for b, f, seq, h, m in itertools.product((2, 4, 8), (1.0, 1.1, 1.2), (512, 1024, 2048), POW2_512_8192,
                                             POW2_512_8192):
        out.append(MoEModel(name=f"schemoe-B{b}-f{f}-L{seq}-H{h}-M{m}", layers=1, d_model=m, heads=8, seq_len=seq,
                            micro_batch=b, ffn_hidden=h, experts=world, top_k=2, capacity_factor=f))
    return out


def fsmoe1458(world: int) -> list[MoEModel]:
    """FSMoE's 1458 layers for ``world`` GPUs (E = world)."""
    out = []
    for b, nh, seq, m, hm, f, ffn in itertools.product((1, 2, 4), (8, 16, 32), (512, 1024, 2048), (1024, 2048, 4096),
                                                      (2, 3, 4), (1.2, 2.4, None), ("gpt", "swiglu")):
        fs = "drop0" if f is None else f"f{f}"
        out.append(MoEModel(name=f"fsmoe-B{b}-h{nh}-L{seq}-M{m}-HM{hm}-{fs}-{ffn}", layers=1, d_model=m, heads=nh,
                            seq_len=seq, micro_batch=b, ffn_hidden=hm * m, experts=world, top_k=2,
                            capacity_factor=f, expert_kind=ffn))
    return out


GRIDS: dict[str, Callable[[int], list[MoEModel]]] = {"schemoe675": schemoe675, "fsmoe1458": fsmoe1458}


def grid(name: str, world: int) -> list[MoEModel]:
    """The grid called ``name`` for ``world`` GPUs."""
    if name not in GRIDS:
        raise MoeschedError(f"unknown grid {name!r}; known: {', '.join(GRIDS)}")
    return GRIDS[name](world)


def feasible(model: MoEModel, cluster: Cluster, profile: Profile) -> str | None:
    """None if ``model`` can run on ``cluster``, else the one-line reason."""
    try:
        cluster.check_model(model.experts)
        check_memory(model, cluster, profile)
    except MoeschedError as e:
        return str(e)
    return None


def shape_columns(model: MoEModel) -> dict[str, Any]:
    """CSV shape columns of a grid entry."""
    return {"name": model.name, "B": model.micro_batch, "L": model.seq_len, "M": model.d_model,
            "H": model.ffn_hidden, "heads": model.heads, "E": model.experts, "k": model.top_k,
            "f": "dropless" if model.capacity_factor is None else model.capacity_factor, "ffn": model.expert_kind}
