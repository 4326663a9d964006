"""Measure what moving an expert's parameters and Adam state costs, and put it in a profile.

    python -m executor.placemove --profile h200x4-nvlink --out moved.json [--device cuda]
        [--model DeepSeek-V2-Lite] [--repeats 20]

The stand-in for a peer copy between GPUs (issue 22): the expert's state -- parameters in
the model's dtype, two fp32 Adam moments and, for a 16-bit model, the fp32 master copy
(:attr:`moesched.placement_cost.PlacementCost.expert_state_bytes`) -- is copied device to pinned
host memory and back to the device, as one flat buffer, for 1/8, 1/4, 1/2, 1, 2 and 4
experts' worth of bytes (on ``--device cpu``: host to host, 1/64 of them, so that a test
runs in seconds). Median of ``--repeats`` after two warm-ups. The fitted cost
(:func:`moesched.costs.fit.fit_cost`, x = bytes) goes into the profile's free-form
``meta.expert_move`` (with ``meta.expert_move_how``), where
:class:`moesched.placement_cost.PlacementCost` reads it: a migration is priced at the slower of
this copy and the link. Output written atomically, checked before any work.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import replace

import torch

from moesched.cluster import Cluster
from moesched.costs.fit import fit_cost
from moesched.fileio import check_outputs, write_json
from moesched.models import MoEModel
from moesched.placement_cost import MOVE_KEY, PlacementCost
from moesched.profile import Profile, resolve_profile_path

from executor import errors

FRACTIONS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)


def time_copy_us(nbytes: int, device: torch.device, repeats: int) -> float:
    """Median µs of device -> pinned host -> device for ``nbytes`` bytes."""
    n = max(1, nbytes // 4)
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    host = torch.empty(n, pin_memory=device.type == "cuda")
    ts = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        host.copy_(src, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the host copy is complete before it goes back
        dst.copy_(host, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            ts.append((time.perf_counter() - t) * 1e6)
    if not torch.equal(src, dst):
        raise RuntimeError("the copied expert state differs from its source")
    return statistics.median(ts)


def _main(argv: list[str] | None) -> int:
    ap = errors.ArgParser(prog="python -m executor.placemove")
    ap.add_argument("--profile", required=True, help="profile file or shipped name to extend")
    ap.add_argument("--out", required=True, help="the profile with meta.expert_move")
    ap.add_argument("--model", default="DeepSeek-V2-Lite", help="model preset whose expert state is moved")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args(argv)
    path = resolve_profile_path(a.profile)
    check_outputs({"--out": a.out}, {"--profile": str(path)})
    if not 1 <= a.repeats <= 1000:
        ap.error(f"--repeats must be between 1 and 1000, got {a.repeats}")
    profile = Profile.load(path)
    model = MoEModel.from_name(a.model)
    state = PlacementCost(model, Cluster(profile.nodes, profile.gpus_per_node), profile).expert_state_bytes
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    dev = torch.device("cuda", 0) if a.device == "cuda" else torch.device("cpu")
    scale = 1.0 if a.device == "cuda" else 1 / 64
    sizes = [int(state * f * scale) for f in FRACTIONS]
    us = [time_copy_us(b, dev, a.repeats) for b in sizes]
    cost = fit_cost(sizes, us)
    name = torch.cuda.get_device_name(dev) if a.device == "cuda" else "CPU"
    meta = {**profile.meta, MOVE_KEY: cost.to_dict(),
            f"{MOVE_KEY}_how": f"device -> pinned host -> device copy of {model.name} expert state "
                               f"({state} bytes = 1 expert), {a.repeats} repeats, median, on {name}"}
    write_json(a.out, replace(profile, meta=meta).to_dict())
    for b, t in zip(sizes, us):
        print(f"{b / 1e6:10.1f} MB  {t:10.1f} us  {b / t / 1e3:7.2f} GB/s")
    print(f"profile with {MOVE_KEY} written to {a.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return errors.guarded(lambda: _main(argv), in_collectives=False)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
