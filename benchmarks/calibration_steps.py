"""Are the profiler's calibration steps the steady state? The step's setup and finish per step.

The profiler times the host around a plan's tasks on the third step of a fresh module
(:func:`executor.profiling.host.measure_host`: two untimed steps, then one timed). On one
H200 its samples of the step's finish stalled in some runs (0.3-1.8 ms where the validation
steps of the same shapes ended in 85-230 µs) and DeepSeek-4L's setup came out 2.4-4.1 ms
where its validation steps took 1.8 ms (``docs/results.md``, host costs). This runs each
calibration plan of each named model for ``--steps`` steps on one fresh module and writes,
per step, what the profiler would have sampled there (:func:`executor.profiling.host.step_samples`),
so the step at which setup and finish settle is read off rather than guessed.

One process, repository root (``PYTHONPATH=.``; NCCL on a GPU, gloo on a CPU)::

    python benchmarks/calibration_steps.py \
        --configs results/h200x1/configs-1gpu-dtypes2.json --names gpt2xl-4L,deepseek-4L --out DIR/steps.csv

Writes one row per (model, plan, step): setup_us, finish_us and call_us. Prints, per model and
plan, the setup and finish at the profiler's timed step (3) and the median over steps 6 on.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import pandas as pd
import torch
import torch.distributed as dist

from executor.layers import TORCH_DTYPES, MoEModule, make_batch
from executor.profiling.host import calibration_plans, step_samples
from executor.profiling.timing import gc_quiet
from executor.runtime import PlannedStep
from moesched.cluster import Cluster
from moesched.configs import load_configs
from moesched.errors import MoeschedError
from moesched.fileio import check_output, write_atomic

PROFILER_STEP = 3  # the profiler's timed step: after its two untimed ones
SETTLED_FROM = 6


def plan_steps(model, plan, steps: int, device: torch.device) -> list[tuple[float, float, float]]:
    """(setup µs, finish µs, call µs) of each of ``steps`` steps of ``plan`` on a fresh module."""
    dtype = TORCH_DTYPES[model.dtype] if device.type == "cuda" else torch.float32
    module = MoEModule(plan.model, ep=1, ep_rank=0, seed=0, device=device, dtype=dtype)
    step = PlannedStep(module, plan)
    batch, target = make_batch(plan.model, 0, 0, device=device, dtype=dtype)
    out = []
    with gc_quiet():
        for _ in range(steps):
            step(batch, target)
            tl = step.timeline()
            (_, _, _, _, setup), (_, _, _, _, finish) = step_samples("", plan, tl)
            out.append((setup, finish, float(tl.meta["call_us"])))
    del step, module
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", required=True)
    ap.add_argument("--names", required=True, help="comma-separated config names")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.steps < SETTLED_FROM:
        raise MoeschedError(f"--steps must be at least {SETTLED_FROM}, got {args.steps}")
    byname = {c.name: c.model for c in load_configs(args.configs)}
    names = args.names.split(",")
    if missing := [n for n in names if n not in byname]:
        raise MoeschedError(f"{args.configs} has no config {missing}")
    check_output("--out", args.out)
    cuda = torch.cuda.is_available()
    store = None
    if "RANK" in os.environ:  # under torchrun
        dist.init_process_group("nccl" if cuda else "gloo")
    else:  # one process on its own: a world of one
        store = tempfile.NamedTemporaryFile(prefix="calibration-steps-", delete=False).name
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        if dist.get_world_size() != 1:
            raise MoeschedError("run on one rank")
        rows = _measure(byname, names, args.steps, cuda)
    finally:
        dist.destroy_process_group()
        if store is not None and os.path.exists(store):
            os.unlink(store)
    write_atomic(args.out, pd.DataFrame(rows).to_csv(index=False))
    return 0


def _measure(byname: dict, names: list[str], steps: int, cuda: bool) -> list[dict]:
    """The rows of every calibration plan of every named model, with a line printed per plan."""
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    rows = []
    for name in names:
        for plan in calibration_plans(byname[name], Cluster(1, 1)):
            label = plan.policy + ("-at" if plan.knobs.at_chunked else "")  # host-rR-LL: degree R, L layers
            mine = [dict(config=name, plan=label, step=i, setup_us=round(setup, 1), finish_us=round(finish, 1),
                         call_us=round(call, 1))
                    for i, (setup, finish, call) in enumerate(plan_steps(byname[name], plan, steps, device), 1)]
            rows += mine
            late = [r for r in mine if r["step"] >= SETTLED_FROM]
            at = mine[PROFILER_STEP - 1]
            print(f"{name} {label}: step {PROFILER_STEP} setup {at['setup_us']:.0f} finish {at['finish_us']:.0f} µs;"
                  f" steps {SETTLED_FROM}+ median setup {statistics.median(r['setup_us'] for r in late):.0f}"
                  f" finish {statistics.median(r['finish_us'] for r in late):.0f} µs", flush=True)
    return rows


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except MoeschedError as e:
        print(f"calibration_steps: error: {e}", file=sys.stderr)
        sys.exit(2)
