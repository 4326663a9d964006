"""Choose pipeline stages and micro-batches for a model on a cluster (``moesched layouts
--pp auto``), torch-free.

At the same global batch as the EP layout (every rank's ``micro_batch`` samples), ``pp``
stages split the cluster's nodes (a stage is ``nodes / pp`` nodes holding ``layers / pp``
contiguous layers, :func:`moesched.pipeline.stage_layers`), so each data-parallel replica
of a stage's ranks carries the samples of ``pp`` ranks: ``pp * micro_batch`` per rank per
step, cut into ``m`` micro-batches. For every (pp, m) that divides:

* **time**: the stages' forward and backward time per micro-batch from the model's graph on
  the stage's nodes (:func:`moesched.pipelineplan.stage_times_us`, EP inside the stage),
  the 1F1B pipeline of them simulated with the stage-to-stage sends
  (:func:`moesched.pipeline.pipeline_graph`, :func:`moesched.pipelineplan.p2p_us`), then the
  stage's gradient all-reduces after the flush (dense over the stage's ranks, experts over
  its expert-DP group; :func:`moesched.cluster.collective_us`), not overlapped;
* **memory**: :func:`moesched.memory.rank_memory` of the first stage (its layers, the
  embeddings counted whole) at one micro-batch, its activations and all-to-all rows times the
  micro-batches 1F1B keeps in flight on it, min(pp, m) (Narayanan et al. 2021 §2.2).

The fastest (pp, m) that fits is chosen; pp = 1, m = 1 (no pipeline, the same accounting)
is always a candidate, so the table says what stages and micro-batches buy.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from moesched.cluster import Cluster, collective_us
from moesched.dense import grad_bytes_per_layer
from moesched.errors import MoeschedError
from moesched.layoutchoice import fastest
from moesched.memory import GB, RankMemory, fit_problem, gpu_memory_bytes, rank_memory
from moesched.models import MoEModel
from moesched.pipeline import pipeline_graph, stage_layers
from moesched.pipelineplan import p2p_us, print_pipeline, stage_times_us
from moesched.profile import Profile
from moesched.sim import simulate

#: Micro-batch counts tried per stage count: pp, 2 pp and 4 pp (1F1B wants m >= pp).
MICROBATCH_FACTORS = (1, 2, 4)


@dataclass
class PipelineOption:
    """One (pp, m): the stage's EP size, first-stage memory (bytes per rank), why it cannot
    run (None when it can), the step (µs: pipeline + gradient all-reduces) and its parts."""

    pp: int
    microbatches: int
    ep: int = 0
    memory: RankMemory | None = None
    problem: str | None = None
    step_us: float | None = None
    pipeline_us: float = 0.0
    grad_us: float = 0.0

    def label(self) -> str:
        return "no pipeline" if self.pp == 1 and self.microbatches == 1 else f"PP{self.pp} x {self.microbatches}"


def _stage_cluster(cluster: Cluster, model1: MoEModel, pp: int) -> Cluster:
    """A stage's nodes with the largest EP size that divides its ranks, the experts and, when
    the command fixed one, ``cluster.ep``."""
    sc = Cluster(cluster.nodes // pp, cluster.gpus_per_node, network=cluster.network)
    cap = cluster.ep or sc.world
    ep = max(d for d in range(1, min(cap, sc.world) + 1) if sc.world % d == 0 and model1.experts % d == 0)
    return replace(sc, ep=ep)


def _in_flight(mem: RankMemory, k: int) -> RankMemory:
    return replace(mem, activations_bytes=mem.activations_bytes * k, a2a_bytes=mem.a2a_bytes * k)


def _grad_us(stage: MoEModel, sc: Cluster, profile: Profile) -> float:
    """The gradient all-reduces of a stage of ``stage.layers`` layers after the flush: dense
    over its ranks, its experts over the expert-DP group (0 where the group has one rank;
    :func:`moesched.dense.grad_bytes_per_layer`)."""
    us = 0.0
    for group, role, ranks in (("dense", "dp", sc.world), ("expert", "expert_dp", sc.expert_dp)):
        nbytes = sum(grad_bytes_per_layer(stage, group, sc.ep_size))
        if ranks > 1 and nbytes:
            us += collective_us(sc, profile, "all_reduce", role, float(nbytes))
    return us


def pipeline_option(model: MoEModel, cluster: Cluster, profile: Profile, pp: int, m: int,
                    zero: int) -> PipelineOption:
    """One candidate (module docstring); ``problem`` says why it cannot run."""
    opt = PipelineOption(pp, m)
    batch = model.micro_batch * pp
    if cluster.nodes % pp or model.layers % pp or batch % m:
        opt.problem = "does not divide"
        return opt
    model1 = replace(model, micro_batch=batch // m)
    sc = _stage_cluster(cluster, model1, pp)
    opt.ep = sc.ep_size
    try:
        first = model1.with_layers(stage_layers(model.layers, pp)[0].stop)
    except MoeschedError as e:  # a stage of dense layers only
        opt.problem = str(e)
        return opt
    opt.memory = _in_flight(rank_memory(first, sc, zero), min(pp, m))
    opt.problem = fit_problem(opt.memory, gpu_memory_bytes(profile.hardware))
    if opt.problem:
        return opt
    fwd, bwd = stage_times_us(model1, sc, profile, pp)
    g, prio = pipeline_graph(pp, m, fwd, bwd, p2p_us(model1, sc, profile) if pp > 1 else 0.0, "1f1b")
    opt.pipeline_us = simulate(g, prio).makespan_us
    moe_stage = replace(model1, layers=first.layers, dense_layers=(), dense_ffn_hidden=None)
    opt.grad_us = max(_grad_us(first, sc, profile), _grad_us(moe_stage, sc, profile))
    opt.step_us = opt.pipeline_us + opt.grad_us
    return opt


def compare_pipelines(model: MoEModel, cluster: Cluster, profile: Profile, zero: int = 0,
                      microbatches: int | None = None) -> tuple[list[PipelineOption], PipelineOption]:
    """Every (pp, m): pp each divisor of the nodes that divides the layers, m = pp, 2 pp, 4 pp
    (or ``microbatches`` when given), and (1, 1); the fastest that runs. MoeschedError when
    none runs."""
    pairs = [(1, 1)] + [(pp, microbatches or f * pp) for pp in range(1, cluster.nodes + 1)
                        if cluster.nodes % pp == 0 and model.layers % pp == 0 for f in MICROBATCH_FACTORS
                        if (microbatches is None or f == 1) and (pp * model.micro_batch) % (microbatches or f * pp) == 0]
    if microbatches is not None and len(pairs) == 1:
        raise MoeschedError(f"--microbatches {microbatches} divides the samples of no pipeline of {model.name} on "
                            f"{cluster.label()} (pp x {model.micro_batch} per rank, pp dividing the nodes and layers)")
    opts = [pipeline_option(model, cluster, profile, pp, m, zero) for pp, m in dict.fromkeys(pairs)]
    return opts, fastest(opts, "pipeline", model, cluster)


def format_pipelines(opts: list[PipelineOption], chosen: PipelineOption) -> str:
    """The table of candidates and a ``why:`` line."""
    lines = [f"{'pipeline':<14} {'EP':>3} {'memory GB/rank':>14} {'step_ms':>9} {'pipe_ms':>9} {'grad_ms':>8}  note"]
    for o in opts:
        mem = f"{o.memory.total_bytes / GB:.1f}" if o.memory else "-"
        if o.step_us is None:
            lines.append(f"{o.label():<14} {o.ep or '-':>3} {mem:>14} {'-':>9} {'-':>9} {'-':>8}  {o.problem}")
        else:
            lines.append(f"{o.label():<14} {o.ep:>3} {mem:>14} {o.step_us / 1e3:>9.2f} {o.pipeline_us / 1e3:>9.2f} "
                         f"{o.grad_us / 1e3:>8.2f}  {'chosen' if o is chosen else ''}".rstrip())
    base = next((o for o in opts if o.pp == 1 and o.microbatches == 1 and o.step_us), None)
    why = (f"why: {chosen.label()} is the fastest that fits"
           + (f", {base.step_us / chosen.step_us:.2f}x the step without a pipeline" if base and chosen is not base
              else ""))
    return "\n".join(lines + ["pipe: the 1F1B pipeline of the stages' graph times; grad: the stage's gradient "
                              "all-reduces after the flush; every row at the same global batch and the same "
                              "accounting (unchunked layers, gradients not overlapped)", why])


def print_pipelines(args: argparse.Namespace, model: MoEModel, cluster: Cluster, profile: Profile) -> None:
    """``--pp auto``: the table of :func:`compare_pipelines`; else
    :func:`moesched.pipelineplan.print_pipeline`."""
    if args.pp == "auto":
        print(format_pipelines(*compare_pipelines(model, cluster, profile, getattr(args, "zero", 0),
                                                  args.microbatches if args.microbatches > 1 else None)))
    else:
        print_pipeline(args, model, cluster, profile)
