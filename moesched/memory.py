"""Per-rank memory of a training step: model states and what the executor keeps for backward.

One record, :class:`RankMemory`, with one field per term (bytes per rank):

* **parameters**: dense parameters (attention, norms, router, shared experts, and with a
  vocabulary the token embedding, output head and final norm) replicated on every rank, routed experts sharded over the EP group (E/EP experts per rank), in the
  model's dtype (``executor/layers.py``: ``LayerParams`` in ``MoEModule.dtype``).
* **gradients**: the executor's two flat gradient buffers (``executor.layers.grad_buffers``:
  "dense" and "expert", every parameter's ``.grad`` a view into them), in the model's dtype
  (bf16 parameters have bf16 gradients: no fp32 gradient copy is allocated).
* **optimizer**: Adam, two fp32 moments (8 bytes/param) plus an fp32 master copy
  (4 bytes/param) when the model is 16-bit: K = 12 bytes/param of ZeRO's mixed-precision
  accounting (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
  Parameter Models", SC'20, Sec. 3.1: 2 + 2 + K = 16 bytes/param), K = 8 for fp32 models.
  ZeRO sharding over the data-parallel group of each parameter (ZeRO Sec. 5, Fig. 1): the
  world for dense parameters, the expert-DP group (world/EP ranks) for experts.
  ``zero`` = 1 shards the optimizer state (P_os), 2 also the gradients (P_os+g). Both keep
  the communication volume of the plain all-reduce (ZeRO Sec. 7.2.1: a reduce-scatter plus
  an all-gather), so the simulated step holds for them. The executor itself allocates
  parameters and full gradient buffers only (no optimizer, no gradient shards): the
  optimizer term, and the ZeRO-2 gradient shards, describe the training job that runs
  the plan.
* **activations**: what the executor keeps between a layer's forward and backward
  (``executor/state.py`` ``LayerState`` and the attention autograd pieces of
  ``executor/tasks.py``), for every layer of the micro-batch: the method of Korthikanti et
  al., "Reducing Activation Recomputation in Large Transformer Models" (MLSys'23, Sec. 4.1,
  Eq. 1: per-layer stored tensors of a transformer block, sbh(34 + 5as/h) bytes in 16-bit
  with dropout and without flash attention) applied to the tensors this executor stores:
  no dropout masks, no s^2 attention scores (scaled-dot-product attention keeps its output
  and log-sum-exp), the MoE's routed copies instead of one MLP; plus the working set of one
  layer's expert backward, where the step peaks (:func:`backward_workspace_bytes`), and
  with a vocabulary the logits and their fp32 copy for the loss
  (:func:`lm_activation_bytes`). Checked against the executor's measured CPU peak
  (``executor/memcheck.py``, ``tests/test_memory_measured.py``).
* **a2a_buffers**: the all-to-all rows a layer keeps for the whole step: dispatch send rows,
  expert outputs, combine results (forward) and combine_bwd send rows, expert dX rows
  (backward), ``LayerState.fsend/eout/comb/bsend/edx``.

Sizes assume uniform routing: every rank sends and receives T*k routed copies per layer
(T = B*L tokens per rank); a capacity factor only drops copies, so this is an upper bound.
Pipeline degrees do not change the totals: the executor keeps every chunk of a layer until
the step ends.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from moesched import dense as dense_layers
from moesched.cluster import Cluster
from moesched.limits import MAX_RANKS
from moesched.errors import MoeschedError
from moesched.models import MoEModel

#: Adam state bytes per parameter: two fp32 moments, plus an fp32 master copy when the model
#: is 16-bit (ZeRO Sec. 3.1, K = 12 for mixed precision).
ADAM_MOMENT_BYTES = 8
MASTER_COPY_BYTES = 4
#: ZeRO stages the memory model prices: 0 (none), 1 (optimizer state), 2 (+ gradients).
ZERO_STAGES = (0, 1, 2)
#: GPU memory per GPU name (bytes, vendor data sheets) when a profile does not state it.
GPU_MEMORY_BYTES = {"NVIDIA H200": 141 * 10**9, "NVIDIA H100": 80 * 10**9, "NVIDIA A100": 80 * 10**9,
                    "NVIDIA B200": 180 * 10**9}
#: Printed names of the terms, in field order.
TERM_NAMES = {"params_bytes": "parameters", "grads_bytes": "gradients", "optimizer_bytes": "optimizer state",
              "activations_bytes": "activations", "a2a_bytes": "all-to-all buffers"}
GB = 10**9


@dataclass(frozen=True)
class RankMemory:
    """Peak memory of one rank, bytes per term (see the module docstring)."""

    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    a2a_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def binding(self) -> tuple[str, int]:
        """(printed name, bytes) of the largest term: the one to shrink first."""
        name = max((f.name for f in fields(self)), key=lambda n: getattr(self, n))
        return TERM_NAMES[name], getattr(self, name)

    def summary(self) -> str:
        """One line: every term in GB."""
        return ", ".join(f"{TERM_NAMES[f.name]} {getattr(self, f.name) / GB:.1f}" for f in fields(self)) + \
            f" (total {self.total_bytes / GB:.1f} GB)"


def gpu_memory_bytes(hardware: dict) -> int:
    """GPU memory of one rank, bytes: the profile's ``gpu_memory_bytes`` when present (the
    measured total of the device), else :data:`GPU_MEMORY_BYTES` of its ``gpu`` name."""
    if hardware.get("gpu_memory_bytes"):
        return int(hardware["gpu_memory_bytes"])
    gpu = str(hardware.get("gpu", ""))
    for name, b in GPU_MEMORY_BYTES.items():
        if name.lower() in gpu.lower():
            return b
    raise MoeschedError(f"no GPU memory size for GPU {gpu!r}; add gpu_memory_bytes to the profile's hardware")


def _check_zero(zero: int) -> None:
    if zero not in ZERO_STAGES:
        raise MoeschedError(f"ZeRO stage must be one of {ZERO_STAGES}, got {zero!r}")


def param_counts(model: MoEModel, ep: int) -> tuple[int, int]:
    """(dense, expert) parameters held by one rank: every layer's dense parameters, and the
    E/EP routed experts of its EP rank (``executor.layers.LayerParams``); a dense layer's
    parameters are all dense (:func:`moesched.dense.param_counts`)."""
    return dense_layers.param_counts(model, ep)


def activation_bytes_per_layer(model: MoEModel) -> int:
    """Bytes one layer keeps for its backward on one rank (b bytes per element, T tokens,
    M model width, H expert hidden, k top-k, a heads, E experts, Hs = shared*H):

    * owner state ``LayerState``: h, u, dy [T, M]; comb_full [T*k, M]; router w [T, k] fp32,
      idx [T, k] int64, kept [T, k] bool; with shared experts shared_out, du_shared [T, M]
      and sh1 (sh3 for SwiGLU) [T, Hs];
    * expert side: the saved GEMM inputs x [T*k, M] and pre-activations h1 (h3) [T*k, H];
    * attention autograd (Korthikanti et al. Eq. 1 counted for this block, no dropout, SDPA):
      :func:`moesched.dense.attention_activation_bytes` (9 [T, M] without grouped-query
      attention, SDPA log-sum-exp [T, a] and norm rstd 2 [T] fp32); router probabilities
      [T, E] fp32.
    """
    b, T, M, H, k = model.bytes_per_elem, model.tokens, model.d_model, model.ffn_hidden, model.top_k
    g = model.expert_gemms - 1  # pre-activations kept per copy: h1 (gpt), h1 and h3 (swiglu)
    hs = model.shared_experts * H
    owner = (3 * T * M + T * k * M) * b + T * k * (4 + 8 + 1)
    if hs:
        owner += (2 * T * M + g * T * hs) * b
    expert = (T * k * M + g * T * k * H) * b
    attention = dense_layers.attention_activation_bytes(model) + 4 * T * model.experts
    return owner + expert + attention


def lm_activation_bytes(model: MoEModel) -> int:
    """Bytes of the language-model head at its peak (a model with ``vocab_size`` V): the
    logits [T, V] in the model's dtype and their fp32 copy for the cross-entropy, T tokens."""
    return model.tokens * (model.vocab_size or 0) * (model.bytes_per_elem + 4)


def backward_workspace_bytes(model: MoEModel) -> int:
    """Transient bytes of one MoE layer's expert backward, the rank's peak moment (measured:
    the CPU allocator's profile of an executor step peaks inside the last layer's
    ``expert_dx``/``expert_dw``, ``executor/tasks.py``): the saved GEMM inputs re-gathered
    for the received rows by ``index_select`` (x [T*k, M] and h1 (h3) [T*k, H]) and the
    activation-gradient temporaries g1 (g3) with the recomputed activation (and, SwiGLU,
    the gate product) in ``experts_dw``: 2(g - 1) [T*k, H], g GEMMs per expert. With b
    bytes per element: T*k*b*(M + 3(g - 1)H)."""
    g = model.expert_gemms - 1
    return model.tokens * model.top_k * model.bytes_per_elem * (model.d_model + 3 * g * model.ffn_hidden)


def a2a_bytes_per_layer(model: MoEModel) -> int:
    """All-to-all rows one layer keeps for the step (bytes): forward dispatch send rows,
    expert outputs and combine results, backward combine_bwd send rows and expert dX rows:
    five [T*k, M] tensors in the model's dtype."""
    return 5 * model.tokens * model.top_k * model.d_model * model.bytes_per_elem


def rank_memory(model: MoEModel, cluster: Cluster, zero: int = 0) -> RankMemory:
    """Per-rank memory of training ``model`` on ``cluster`` (EP = ``cluster.ep_size``) with
    Adam under ZeRO stage ``zero`` (0, 1 or 2). Raises MoeschedError for another stage."""
    _check_zero(zero)
    ep = cluster.ep_size
    dense, expert = param_counts(model, ep)
    b = model.bytes_per_elem
    # Each parameter's data-parallel group: the world (dense), the expert-DP group (experts).
    sharded = dense / cluster.world + expert / cluster.expert_dp
    state = ADAM_MOMENT_BYTES + (MASTER_COPY_BYTES if b < 4 else 0)
    params = (dense + expert) * b
    grads = sharded * b if zero >= 2 else params
    optimizer = sharded * state if zero >= 1 else (dense + expert) * state
    # The expert side concatenates its saved chunks at the first backward chunk of a layer:
    # one layer's expert tensors twice, once.
    # Dense layers keep their own activations (:func:`moesched.dense.activation_bytes`), no all-to-all rows.
    nd = len(model.dense_layers)
    # And one MoE layer's expert backward works on re-gathered copies and temporaries (the
    # peak moment of the step: :func:`backward_workspace_bytes`).
    act = (model.layers - nd) * activation_bytes_per_layer(model) + nd * dense_layers.activation_bytes(model) + \
        (model.tokens * model.top_k * (model.d_model + (model.expert_gemms - 1) * model.ffn_hidden)) * b + \
        (backward_workspace_bytes(model) if model.layers > nd else 0) + lm_activation_bytes(model)
    a2a = (model.layers - nd) * a2a_bytes_per_layer(model)
    return RankMemory(int(params), int(grads), int(optimizer), int(act), a2a)


def memory_problem(model: MoEModel, cluster: Cluster, capacity_bytes: int, zero: int = 0) -> str | None:
    """Why ``model`` does not fit a GPU of ``capacity_bytes`` on ``cluster`` ("needs N GB/rank,
    binding term ...": the largest term, then every term), or None when it fits."""
    mem = rank_memory(model, cluster, zero)
    if mem.total_bytes <= capacity_bytes:
        return None
    term, size = mem.binding()
    return f"needs {mem.total_bytes / GB:.0f} GB/rank, binding term {term} {size / GB:.0f} GB/rank ({mem.summary()})"


def _unbounded(model: MoEModel) -> Cluster:
    """The largest cluster accepted (MAX_RANKS GPUs), at the largest EP (E): the ZeRO-sharded
    terms at their smallest."""
    return Cluster(nodes=max(1, MAX_RANKS // model.experts), gpus_per_node=model.experts, ep=model.experts)


def fit_problem(mem: RankMemory, capacity_bytes: int) -> str | None:
    """"does not fit: needs N GB/rank of C, binding term ..." when ``mem`` exceeds a GPU of
    ``capacity_bytes``, else None (the note of a layout or pipeline candidate)."""
    if mem.total_bytes <= capacity_bytes:
        return None
    term, size = mem.binding()
    return (f"does not fit: needs {mem.total_bytes / GB:.1f} GB/rank of {capacity_bytes / GB:.0f}, "
            f"binding term {term} {size / GB:.1f} GB")


def fits_nowhere(model: MoEModel, capacity_bytes: int, zero: int) -> str | None:
    """Why ``model`` fits no cluster of any size at ZeRO stage ``zero`` (the terms that do
    not shrink with more ranks exceed the GPU at the largest EP), or None."""
    big = _unbounded(model)
    why = memory_problem(model, big, capacity_bytes, zero)
    if why is None:
        return None
    higher = [z for z in ZERO_STAGES if z > zero and memory_problem(model, big, capacity_bytes, z) is None]
    hint = f"; with --zero {higher[0]} it fits on enough nodes" if higher else \
        "; in the EP layout it needs more sharding (try `moesched layouts`: experts inside tensor parallelism)"
    return (f"{model.name} fits no cluster of {capacity_bytes / GB:.3g} GB GPUs at ZeRO-{zero}: even at EP "
            f"{model.experts} on up to {MAX_RANKS} GPUs a rank {why}{hint}")


def remedies(model: MoEModel, cluster: Cluster, capacity_bytes: int, zero: int) -> str:
    """Ways out for a model that does not fit ``cluster`` but fits some cluster at ``zero``:
    a higher ZeRO stage that fits this cluster, a larger EP, more nodes."""
    out = [f"--zero {z}" for z in ZERO_STAGES
           if z > zero and memory_problem(model, cluster, capacity_bytes, z) is None][:1]
    if any(cluster.world % d == 0 and model.experts % d == 0 for d in range(cluster.ep_size + 1, cluster.world + 1)):
        out.append("a larger EP")
    out.append("more nodes")
    return " or ".join(out)


def check_memory(model: MoEModel, cluster: Cluster, capacity_bytes: int, zero: int = 0) -> None:
    """Raise MoeschedError when ``model`` does not fit one GPU of ``capacity_bytes`` on
    ``cluster`` (one line naming the binding term and a way out)."""
    why = memory_problem(model, cluster, capacity_bytes, zero)
    if why is None:
        return
    nowhere = fits_nowhere(model, capacity_bytes, zero)
    if nowhere is not None:
        raise MoeschedError(nowhere)
    raise MoeschedError(f"{model.name} does not fit {cluster.label()} ({capacity_bytes / GB:.3g} GB/GPU) at EP "
                        f"{cluster.ep_size}, ZeRO-{zero}: a rank {why}; try "
                        f"{remedies(model, cluster, capacity_bytes, zero)}")
