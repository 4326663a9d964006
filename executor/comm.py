"""Process groups per link resource and the all-to-all primitives (flat and two-hop).

Groups: one process group per (link resource, rank set): the expert-parallel group for the
all-to-alls, the world for dense gradients, the expert-DP group for expert gradients, and
for a hierarchical all-to-all the node-local ("intra") and same-local-index ("inter")
parts of the EP group. Each rank set is created with ``dist.new_group`` by every rank in
the same order, once per process: later plans reuse it. A "meta" group per EP group (NCCL
on GPUs, gloo on CPUs) carries the small count exchange, and a gloo world group the loss
average on CPUs (on GPUs the dense group averages it).

All-to-all: ``a2a`` issues ``all_to_all_single`` with uneven splits, async. The two-hop
(2DH) variant follows Tutel's 2DH: forward direction (dispatch, combine_bwd) runs the
intra-node hop then the inter-node hop; the reverse direction (combine, dispatch_bwd)
inter then intra. Every hop is planned from the row matrix R[src][dst] of the logical
flat all-to-all, known on every rank from the count exchange.
"""
from __future__ import annotations

import warnings

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from moesched.cluster import Cluster
from moesched.errors import MoeschedError
from moesched.graph import resource_of
from moesched.knobs import Knobs

from executor.state import excl_cumsum, ranges


@dataclass
class Groups:
    """Process groups seen by one rank; ``ep_rank`` is its index in the EP group."""

    ep: object
    meta: object
    world_meta: object
    dense: object
    expert: object | None
    intra: object | None
    inter: object | None
    ep_rank: int
    ep_size: int
    node_size: int  # EP members per node (hierarchical hops)


# Passing NCCL options together with timeout= makes PyTorch warn on every group although the
# timeout keyword is what we mean to apply.
warnings.filterwarnings("ignore", message=r"backend_options\._timeout was specified")


def link_pg_options(backend: str, resource: str) -> object | None:
    """NCCL options with a high-priority internal stream for the links: a collective issued
    while GEMMs fill the GPU otherwise waits for SMs until they drain (Megatron-Core's
    --high-priority-a2a-comm-stream does the same). None elsewhere."""
    if backend != "nccl" or not resource.startswith("comm"):
        return None
    try:
        opts = dist.ProcessGroupNCCL.Options()
        opts.is_high_priority_stream = True
        return opts
    except (AttributeError, RuntimeError):
        return None


# Groups live as long as the default group: every PlannedStep of a process (validation runs
# dozens of plans) reuses one communicator per (link resource, backend, rank set, timeout),
# as a training job does. A fresh set per plan leaked NCCL communicators (their buffers and
# proxy threads stay until the process ends) and gave each plan its own channel set-up.
_GROUPS: dict[tuple, object] = {}
_GROUPS_OF: list[object] = [None]  # the default group that _GROUPS belongs to


def _group(ranks: list[int], resource: str, backend: str, timeout: timedelta) -> object:
    """The process group of ``ranks`` for ``resource``: created on first use (every rank
    calls this in the same order, member or not, as ``dist.new_group`` requires)."""
    if _GROUPS_OF[0] is not dist.group.WORLD:  # a new default group: the old groups are gone
        _GROUPS.clear()
        _GROUPS_OF[0] = dist.group.WORLD
    key = (resource, backend, tuple(ranks), timeout)
    if key not in _GROUPS:
        _GROUPS[key] = dist.new_group(ranks, backend=backend, timeout=timeout,
                                      pg_options=link_pg_options(backend, resource))
    return _GROUPS[key]


def build_groups(cluster: Cluster, knobs: Knobs, backend: str, timeout_s: float = 120.0) -> Groups:
    """Every subgroup the plan uses (collective over the world: all ranks must call it);
    groups made for an earlier plan of this process are reused (:func:`_group`)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    ep, G = cluster.ep_size, cluster.gpus_per_node
    to = timedelta(seconds=timeout_s)
    mine: dict[str, object] = {}

    def make(name: str, resource: str, sets: list[list[int]], be: str) -> None:
        for s in sets:
            pg = _group(s, resource, be, to)
            if rank in s:
                mine[name] = pg

    ep_sets = [list(range(g * ep, (g + 1) * ep)) for g in range(world // ep)]
    make("ep", resource_of(cluster.scope("ep")), ep_sets, backend)
    make("meta", "meta", ep_sets, backend)  # routing counts: NCCL on GPUs (no gloo round trip)
    make("world_meta", "meta", [list(range(world))], "gloo")
    make("dense", resource_of(cluster.scope("dp")), [list(range(world))], backend)
    if cluster.expert_dp > 1:
        make("expert", resource_of(cluster.scope("expert_dp")),
             [list(range(q, world, ep)) for q in range(ep)], backend)
    hier = knobs.a2a == "hierarchical" and cluster.nodes > 1 and G > 1 and cluster.scope("ep") != "intra"  # as graph
    if hier:
        if ep % G:
            raise MoeschedError(f"hierarchical all-to-all needs the EP group ({ep}) to span whole nodes of {G}")
        make("intra", "comm_intra", [s[i:i + G] for s in ep_sets for i in range(0, ep, G)], backend)
        make("inter", "comm_inter", [s[g::G] for s in ep_sets for g in range(G)], backend)
    return Groups(ep=mine["ep"], meta=mine["meta"], world_meta=mine["world_meta"], dense=mine["dense"],
                  expert=mine.get("expert"), intra=mine.get("intra"), inter=mine.get("inter"), ep_rank=rank % ep,
                  ep_size=ep, node_size=G if hier else ep)


def a2a(send: torch.Tensor, send_split: list[int], recv_split: list[int], group: object,
        keep_on: torch.cuda.Stream | None) -> tuple[torch.Tensor, object]:
    """Issue one uneven all_to_all_single of rows; return (recv buffer, Work).

    send [sum(send_split), M]. The receive buffer is allocated on the current stream (the
    link's stream on CUDA) and marked as used by ``keep_on`` (the compute stream).
    Collectives here go straight to the ProcessGroup (``alltoall_base``, ``allreduce``):
    ``torch.distributed``'s wrappers add checks and logging that cost about 15 µs of host
    time per call (25.5 against 10.2 µs for a one-rank gloo all-to-all on a CPU); every group here is a ProcessGroup that this rank belongs to.
    """
    recv = send.new_empty((sum(recv_split),) + tuple(send.shape[1:]))
    if keep_on is not None:
        recv.record_stream(keep_on)
    send = send.contiguous()
    issue = getattr(group, "alltoall_base", None)
    if issue is None:
        return recv, dist.all_to_all_single(recv, send, recv_split, send_split, group=group, async_op=True)
    return recv, issue(recv, send, recv_split, send_split, dist.AllToAllOptions())


def all_reduce_sum(t: torch.Tensor, group: object) -> object:
    """Async SUM all-reduce of t in place; the Work."""
    issue = getattr(group, "allreduce", None)
    if issue is None:
        return dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group, async_op=True)
    return issue([t], dist.AllreduceOptions())


def _swap(sizes: np.ndarray) -> np.ndarray:
    """Index turning rows in (a, b) block order, sizes [A, B], into (b, a) order."""
    return ranges(excl_cumsum(sizes).T, sizes.T)


def hop_plan(R: np.ndarray, me: int, G: int, hop: str, forward: bool
             ) -> tuple[np.ndarray | None, list[int], list[int], np.ndarray | None]:
    """Plan one hop of a two-hop all-to-all of the flat row matrix R [S, S] (src -> dst, host).

    Returns (send_index or None, send_split, recv_split, out_pos or None): the hop sends
    ``input[send_index]``; after the last hop of the reverse direction, received row i sits
    at position ``out_pos[i]`` of the flat all-to-all's receive order.
    Forward direction: hop "intra" takes flat send order as input, "inter" the intra output.
    Reverse direction: hop "inter" takes flat send order, "intra" the inter output.
    """
    R = np.asarray(R, dtype=np.int64)
    S = R.shape[0]
    N = S // G
    n, g = divmod(me, G)
    R4 = R.reshape(N, G, N, G)  # [src node, src local, dst node, dst local]
    if forward and hop == "intra":
        blocks = R4[n, g]                                   # [n', g'] rows to (n', g')
        return _swap(blocks), blocks.sum(0).tolist(), R4[n, :, :, g].sum(1).tolist(), None
    if forward and hop == "inter":
        held = R4[n, :, :, g]                               # [gs, n'] rows held, (gs, n') order
        return _swap(held), held.sum(0).tolist(), R4[:, :, n, g].sum(1).tolist(), None
    if not forward and hop == "inter":
        blocks = R4[n, g]                                   # [n', g'] flat send order is (n', g')
        return None, blocks.sum(1).tolist(), R4[:, g, n, :].sum(1).tolist(), None
    held = R4[:, g, n, :]                                   # [ns, g'] rows held, (ns, g') order
    got = R4[:, :, n, g].T                                  # [gs, ns] received, (gs, ns) order
    flat_pos = excl_cumsum(R4[:, :, n, g])                  # flat receive offset of source (ns, gs)
    out_pos = ranges(flat_pos.T, got)
    return _swap(held), held.sum(0).tolist(), got.sum(1).tolist(), out_pos
