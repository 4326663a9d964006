"""The solver: schedules that beat the published ones on the simulator.

* :mod:`moesched.solve.search` — the heuristic search (one-layer sub-simulations,
  gradient chunking, per-layer descent) behind ``moesched solve``;
* :mod:`moesched.solve.api` — ``solve(model, cluster, profile) -> SolveResult``;
* :mod:`moesched.solve.layout` — the expert-parallel size: every EP that fits in memory
  solved, the fastest kept (``moesched solve`` without ``/epN``);
* :mod:`moesched.solve.cpsat` — exact optimal orders for small instances (OR-Tools
  CP-SAT; import it explicitly, nothing here imports ortools);
* :mod:`moesched.solve.grids` — the ScheMoE 675 and FSMoE 1458 layer grids.
"""
from __future__ import annotations

from typing import Any

__all__ = ["solve", "SolveResult", "PolicyRow"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from moesched.solve import api
        return getattr(api, name)
    raise AttributeError(name)
