"""Refit a measured profile's host costs in work units, from the raw samples it keeps.

Profiles measured before work units keep host samples in tokens (and the step kinds in
layers); this rewrites each sample's x as the task's work (FLOPs of a compute task, bytes of
an all-to-all, the parameter bytes of one rank for the step kinds; see
:func:`moesched.host.host_features`), refits the host costs and writes the profile back,
the measurements untouched. The models come from the configuration set the profile was
measured on (its shape keys must all be there)::

    python benchmarks/host_units.py results/h200x1/h200x1-ops.json.gz results/h200x1/configs-1gpu.json
"""
from __future__ import annotations

import dataclasses
import json
import sys

from moesched import work
from moesched.configs import load_configs
from moesched.costs.calibrate import with_host
from moesched.errors import MoeschedError
from moesched.fileio import write_atomic
from moesched.graph import _FLOPS
from moesched.host import STEP_KINDS, step_x
from moesched.kinds import A2A_KINDS
from moesched.memory import param_counts
from moesched.models import MoEModel
from moesched.profile import Profile


def work_x(m: MoEModel, kind: str, x: float, ep: int) -> float:
    """The work-unit x of a token-unit sample of ``kind`` on model shape ``m``."""
    if kind in _FLOPS:
        return float(_FLOPS[kind](m, int(x)))
    if kind in A2A_KINDS:
        return float(work.a2a_bytes(m, int(x)))
    if kind in STEP_KINDS:
        mm = dataclasses.replace(m, layers=int(x))
        return step_x(mm.layers, sum(param_counts(mm, ep)) * mm.bytes_per_elem, "work")
    return float(x)  # grad_ar: bytes either way


def convert(prof: Profile, models: dict[str, MoEModel]) -> Profile:
    samples = prof.meta.get("samples") or {}
    if not samples.get("host"):
        raise MoeschedError(f"profile {prof.name} keeps no host samples")
    if samples.get("host_x_unit", "tokens") == "work":
        return prof
    missing = sorted({r[0] for r in samples["host"]} - set(models))
    if missing:
        raise MoeschedError(f"the configuration set lacks the shapes {missing}")
    ep = prof.nodes * prof.gpus_per_node
    rows = [(s, k, work_x(models[s], k, float(x), ep), int(r), float(us)) for s, k, x, r, us in samples["host"]]
    return with_host(prof, rows, float(samples.get("host_lag_us", prof.host.lag_us if prof.host else 0.0)),
                     None, None, "work")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python benchmarks/host_units.py PROFILE CONFIGS", file=sys.stderr)
        return 2
    prof = Profile.load(argv[0])
    models = {c.model.shape_key(): c.model for c in load_configs(argv[1])}
    out = convert(prof, models)
    write_atomic(argv[0], json.dumps(out.to_dict(), indent=1) + "\n")
    h = out.host
    print(f"{argv[0]}: host costs in {h.x_unit} units; step_setup {h.kinds['step_setup']}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except MoeschedError as e:
        print(f"host_units: error: {e}", file=sys.stderr)
        sys.exit(2)
