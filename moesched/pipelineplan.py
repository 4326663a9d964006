"""Pipeline stages and micro-batches for ``moesched layouts`` / ``moesched solve`` (``--pp``,
``--microbatches``), torch-free.

Each of the ``pp`` stages is one copy of the command's cluster (a pipeline of ``pp`` stages
uses ``pp`` times its GPUs) holding the contiguous layers of :func:`moesched.pipeline.stage_layers`;
the batch per rank is cut into ``microbatches`` micro-batches (:func:`moesched.microbatch.split_model`).
A stage's forward and backward times come from the model's graph: one micro-batch's graph
(:func:`moesched.graph.build`, unchunked layers) list-scheduled on GPU costs, the span of the
tasks of the stage's layers (the loss in the last stage; the gradient all-reduce, which runs
after the pipeline flush, left out). Between stages an activation (forward) or its gradient
(backward) of B/m x L x M elements crosses a node boundary: latency + bytes over the GPU's
share of its node's NICs (the network's inter tier; Narayanan et al. 2021 §3 prices the
pipeline's point-to-point the same way). The step is :func:`moesched.pipeline.pipeline_graph`
simulated under 1F1B; its idle share beside the uniform-stage bubble (S - 1) / (m + S - 1)
(Narayanan et al. 2021 Eq. 1, as a share of the step).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.graph import build_compiled
from moesched.knobs import Knobs
from moesched.microbatch import split_model
from moesched.models import MoEModel
from moesched.network import Network, default_network_name, load_network
from moesched.pipeline import bubble_fraction, pipeline_graph, stage_layers
from moesched.profile import Profile
from moesched.sim import simulate


def check_pipeline(model: MoEModel, pp: int, microbatches: int) -> MoEModel:
    """The one-micro-batch model, after checking that ``pp`` stages divide the layers and
    ``microbatches`` divide the batch per rank (MoeschedError, one line, otherwise)."""
    for flag, v in (("--pp", pp), ("--microbatches", microbatches)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise MoeschedError(f"{flag} must be a positive integer, got {v!r}")
    stage_layers(model.layers, pp)
    return split_model(model, microbatches)


@dataclass
class PipelineReport:
    """Stage times (µs per micro-batch), the point-to-point time per send (µs), the
    simulated 1F1B step (µs) and its idle share against the formula's bubble."""

    stages: int
    microbatches: int
    layers: list[range]
    fwd_us: list[float]
    bwd_us: list[float]
    p2p_us: float
    step_us: float
    idle_share: float
    bubble_formula: float


def stage_times_us(model1: MoEModel, cluster: Cluster, profile: Profile,
                   stages: int) -> tuple[list[float], list[float]]:
    """Forward and backward time of each stage for one micro-batch of ``model1``, µs: the
    span of its layers' tasks in the list-scheduled one-micro-batch graph."""
    c = build_compiled(model1, cluster, profile, Knobs.uniform(model1.layers, 1))
    st, en, _ = c.run()
    fwd, bwd = [], []
    for rng in stage_layers(model1.layers, stages):
        for phase, out in (("fwd", fwd), ("bwd", bwd)):
            idx = [i for i, (ph, ly, k) in enumerate(zip(c.phase, c.layer, c.kind))
                   if ph == phase and k != "grad_ar" and (ly in rng or (k == "loss" and rng.stop == model1.layers))]
            out.append(max(en[0][i] for i in idx) - min(st[0][i] for i in idx))
    return fwd, bwd


def stage_network(cluster: Cluster, profile: Profile) -> Network:
    """The network between stages: the cluster's, else the default for the profile's GPU."""
    return cluster.network or load_network(default_network_name(str(profile.hardware["gpu"])))


def p2p_us(model1: MoEModel, cluster: Cluster, profile: Profile) -> float:
    """One stage-to-stage send of a micro-batch's activations (B/m x L x M elements), µs:
    inter-node latency + bytes / (node NIC bytes per µs / GPUs per node)."""
    net = stage_network(cluster, profile)
    nbytes = model1.tokens * model1.d_model * model1.bytes_per_elem
    return net.inter.latency_us + nbytes / (net.node_bytes_per_us / cluster.gpus_per_node)


def pipeline_report(model: MoEModel, cluster: Cluster, profile: Profile, pp: int,
                    microbatches: int) -> PipelineReport:
    """Stage times from the graph, the 1F1B pipeline of them simulated (see the module docstring)."""
    model1 = check_pipeline(model, pp, microbatches)
    fwd, bwd = stage_times_us(model1, cluster, profile, pp)
    p2p = p2p_us(model1, cluster, profile) if pp > 1 else 0.0
    g, prio = pipeline_graph(pp, microbatches, fwd, bwd, p2p, "1f1b")
    step = simulate(g, prio).makespan_us
    busy = [microbatches * (f + b) for f, b in zip(fwd, bwd)]
    idle = sum(1.0 - x / step for x in busy) / pp if step else 0.0
    return PipelineReport(pp, microbatches, stage_layers(model.layers, pp), fwd, bwd, p2p, step, idle,
                          bubble_fraction(pp, microbatches))


def format_report(r: PipelineReport) -> str:
    """The report as lines: a row per stage, then the step and its bubble."""
    lines = [f"pipeline: {r.stages} stages x {r.microbatches} micro-batches, 1F1B (each stage one copy of the "
             f"cluster; times per micro-batch from the model's graph, GPU costs)",
             f"{'stage':>5} {'layers':>9} {'fwd_ms':>9} {'bwd_ms':>9}"]
    for s, (rng, f, b) in enumerate(zip(r.layers, r.fwd_us, r.bwd_us)):
        lines.append(f"{s:>5} {f'{rng.start}-{rng.stop - 1}':>9} {f / 1e3:>9.3f} {b / 1e3:>9.3f}")
    lines.append(f"stage-to-stage send: {r.p2p_us / 1e3:.3f} ms; pipelined step: {r.step_us / 1e3:.3f} ms; "
                 f"idle share {100 * r.idle_share:.1f}% (uniform-stage bubble (S-1)/(m+S-1) = "
                 f"{100 * r.bubble_formula:.1f}%)")
    return "\n".join(lines)


def format_microbatch_plans(model: MoEModel, cluster: Cluster, profile: Profile, microbatches: int) -> str:
    """Without stages: the step of ``microbatches`` micro-batches under the best single-
    micro-batch policy, combined 1F1B, DualPipe and moesched's cross-micro-batch plan
    (:func:`moesched.microbatch_search.compare`), as lines."""
    from moesched.microbatch_search import compare
    plans = compare(model, cluster, profile, microbatches)
    lines = [f"micro-batches: {microbatches} of {model.micro_batch // microbatches} samples per rank "
             f"(strict stream orders, GPU costs)", f"{'plan':<24} {'step_ms':>9}  order"]
    for key, p in plans.items():
        lines.append(f"{key:<24} {p.step_us / 1e3:>9.3f}  {p.label}")
    return "\n".join(lines)


def _pp(text: str) -> int | str:
    """``--pp``: a number of stages, or "auto"."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of stages or 'auto', got {text!r}") from None


def pipeline_args_checked(args: argparse.Namespace, model: MoEModel) -> None:
    """Check ``--pp`` / ``--microbatches`` before any work (``--pp auto``: the micro-batches
    only)."""
    if args.pp == "auto":  # the micro-batches must divide some candidate's batch (moesched.pipelinechoice)
        check_pipeline(replace(model, micro_batch=args.microbatches), 1, args.microbatches)
    else:
        check_pipeline(model, args.pp, args.microbatches)


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """``--pp`` and ``--microbatches``, shared by ``layouts`` and ``solve``."""
    parser.add_argument("--pp", type=_pp, default=1, metavar="N|auto",
                        help="pipeline stages (must divide the layers; each stage one copy of the cluster); "
                             "prints the 1F1B pipeline of the stages' times; 'auto': choose stages over the "
                             "cluster's nodes and micro-batches at the same global batch (default 1)")
    parser.add_argument("--microbatches", type=int, default=1, metavar="N",
                        help="micro-batches per step (must divide the batch per rank); without --pp, prints "
                             "the cross-micro-batch plans (default 1)")


def print_pipeline(args: argparse.Namespace, model: MoEModel, cluster: Cluster, profile: Profile) -> None:
    """Print the pipeline report (``--pp`` > 1) or the cross-micro-batch plans
    (``--microbatches`` > 1 without stages); nothing for one stage and one micro-batch."""
    if args.pp > 1:
        print(format_report(pipeline_report(model, cluster, profile, args.pp, args.microbatches)))
    elif args.microbatches > 1:
        print(format_microbatch_plans(model, cluster, profile, args.microbatches))
