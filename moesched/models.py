"""MoE transformer shapes: a frozen dataclass and a registry of presets by name.

Sizes are per *rank*: ``micro_batch`` samples of ``seq_len`` tokens enter every rank of
the expert-parallel group each step. All sizes are counts; bytes come from ``dtype``.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from moesched import routers
from moesched.errors import MoeschedError
from moesched.limits import MAX_EXPERTS, MAX_LAYERS, MAX_WIDTH

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
EXPERT_KINDS = ("gpt", "swiglu")
MAX_SIZE = {"layers": MAX_LAYERS, "experts": MAX_EXPERTS}  # other integer fields: MAX_WIDTH
ROUTERS = routers.ROUTERS
#: fields a model dict may leave out (their defaults apply)
OPTIONAL_FIELDS = frozenset({"kv_heads", "head_dim", "rope_theta", "norm_eps", "qk_norm", "norm_topk_prob",
                             "vocab_size", "tie_embeddings", "aux_loss_coef", "z_loss_coef", "router_groups",
                             "router_group_topk", "bias_update_rate", "router_dim", "dense_layers",
                             "dense_ffn_hidden"})


@dataclass(frozen=True)
class MoEModel:
    """One MoE transformer: every layer is attention + norm + router + MoE FFN, but the
    optional dense layers (attention + norm + dense FFN).

    Attributes:
        name: preset name, or any label.
        layers: number of transformer blocks (each with an MoE FFN).
        d_model: hidden size M.
        heads: attention heads (d_model must divide by it).
        seq_len: tokens per sample L.
        micro_batch: samples per rank per step B.
        ffn_hidden: hidden size H of one expert (and of one shared expert).
        experts: routed experts E per layer.
        top_k: experts per token k.
        capacity_factor: f of GShard (slots per expert = ceil(f*k*B*L/E)); None = dropless.
        shared_experts: always-on experts per layer (DeepSeek style), 0 for none.
        expert_kind: "gpt" (two GEMMs, GELU) or "swiglu" (three GEMMs).
        router: routing function (:mod:`moesched.routers`): "topk_softmax" (GShard/Mixtral),
            "switch", "sigmoid", "deepseek_v3", "expert_choice" or "xmoe".
        dtype: "bf16", "fp16" or "fp32" for activations, weights and gradients.

    Attention and language-model details (their defaults keep a model's dict, hash and plans
    as they were without them; :meth:`to_dict` leaves a field at its default out):
        kv_heads: key/value heads of grouped-query attention (divides heads); None = heads.
        head_dim: size of one attention head; None = d_model // heads.
        rope_theta: base of rotary position embeddings (Su et al. 2021, as Llama/Mixtral);
            None = no position embedding.
        norm_eps: epsilon of every RMSNorm.
        qk_norm: RMSNorm over each query and key head before the rotary embedding (Qwen3).
        norm_topk_prob: renormalise the top-k router weights to sum 1 (Mixtral: True).
        vocab_size: tokens of the embedding and output head (None: blocks only).
        tie_embeddings: the output head reuses the token embedding.

    Router details (:mod:`moesched.routers`; defaults: none of them):
        aux_loss_coef: alpha of the Switch/GShard load-balancing loss (0 = off).
        z_loss_coef: beta of the ST-MoE router z-loss (0 = off).
        router_groups, router_group_topk: deepseek_v3's expert groups and groups kept.
        bias_update_rate: deepseek_v3's gamma (bias step per training step).
        router_dim: xmoe's low-dimensional routing size d_r.

    Dense (non-MoE) layers (defaults: none; :mod:`moesched.dense`):
        dense_layers: indices of the layers whose FFN is one dense FFN of the expert kind
            instead of router + experts (DeepSeek-V2/V3's first ``first_k_dense_replace``
            layers, Qwen2/3-MoE's ``mlp_only_layers``); sorted, distinct, in [0, layers),
            at least one layer stays MoE. A JSON list becomes a tuple.
        dense_ffn_hidden: hidden size of that dense FFN (HF ``intermediate_size``); set
            exactly when dense_layers is not empty.
    """

    name: str
    layers: int
    d_model: int
    heads: int
    seq_len: int
    micro_batch: int
    ffn_hidden: int
    experts: int
    top_k: int
    capacity_factor: float | None = None
    shared_experts: int = 0
    expert_kind: str = "gpt"
    router: str = "topk_softmax"
    dtype: str = "bf16"
    kv_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float | None = None
    norm_eps: float = 1e-6
    qk_norm: bool = False
    norm_topk_prob: bool = True
    vocab_size: int | None = None
    tie_embeddings: bool = False
    aux_loss_coef: float = 0.0
    z_loss_coef: float = 0.0
    router_groups: int = 1
    router_group_topk: int = 1
    bias_update_rate: float = 0.001
    router_dim: int = 16
    dense_layers: tuple[int, ...] = ()
    dense_ffn_hidden: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 1000:
            raise MoeschedError(f"model name must be a non-empty string, got {self.name!r:.40}")
        for f in ("layers", "d_model", "heads", "seq_len", "micro_batch", "ffn_hidden", "experts", "top_k"):
            v, most = getattr(self, f), MAX_SIZE.get(f, MAX_WIDTH)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= most:
                raise MoeschedError(f"model {self.name}: {f} must be a positive integer at most {most}, got {v!r:.40}")
        if not isinstance(self.shared_experts, int) or isinstance(self.shared_experts, bool) or self.shared_experts < 0:
            raise MoeschedError(f"model {self.name}: shared_experts must be an integer >= 0, got {self.shared_experts!r}")
        if self.top_k > self.experts:
            raise MoeschedError(f"model {self.name}: top_k={self.top_k} exceeds experts={self.experts}")
        if self.head_dim is None and self.d_model % self.heads:
            raise MoeschedError(f"model {self.name}: d_model={self.d_model} is not divisible by heads={self.heads}")
        if self.capacity_factor is not None and (isinstance(self.capacity_factor, bool) or not isinstance(
                self.capacity_factor, (int, float)) or not 0 < self.capacity_factor <= 1e6):
            raise MoeschedError(f"model {self.name}: capacity_factor must be a number in (0, 1e6] or None (dropless)")
        if self.expert_kind not in EXPERT_KINDS:
            raise MoeschedError(f"model {self.name}: expert_kind must be one of {EXPERT_KINDS}, got {self.expert_kind!r}")
        routers.check(self)
        if self.dtype not in DTYPE_BYTES:
            raise MoeschedError(f"model {self.name}: dtype must be one of {tuple(DTYPE_BYTES)}, got {self.dtype!r}")
        self._check_lm_fields()
        self._check_dense_fields()

    def _check_dense_fields(self) -> None:
        """Validate dense_layers / dense_ffn_hidden; a list becomes a tuple (hashable)."""
        dl = self.dense_layers
        if not isinstance(dl, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) for i in dl):
            raise MoeschedError(f"model {self.name}: dense_layers must be a list of layer indices, got {dl!r}")
        object.__setattr__(self, "dense_layers", tuple(dl))
        if list(dl) != sorted(set(dl)) or (dl and not 0 <= dl[0] <= dl[-1] < self.layers):
            raise MoeschedError(f"model {self.name}: dense_layers must be sorted distinct indices in "
                                f"[0, {self.layers}), got {list(dl)}")
        if len(dl) == self.layers:
            raise MoeschedError(f"model {self.name}: every layer is dense; at least one must be MoE")
        h = self.dense_ffn_hidden
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h <= 0):
            raise MoeschedError(f"model {self.name}: dense_ffn_hidden must be a positive integer or None, got {h!r}")
        if bool(dl) != (h is not None):
            raise MoeschedError(f"model {self.name}: dense_layers and dense_ffn_hidden go together "
                                f"(got dense_layers={list(dl)}, dense_ffn_hidden={h!r})")

    def _check_lm_fields(self) -> None:
        pos = lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_WIDTH  # noqa: E731
        for f in ("kv_heads", "head_dim", "vocab_size"):
            v = getattr(self, f)
            if v is not None and not pos(v):
                raise MoeschedError(f"model {self.name}: {f} must be a positive integer at most {MAX_WIDTH} or None, "
                                    f"got {v!r:.40}")
        if self.heads % self.n_kv_heads:
            raise MoeschedError(f"model {self.name}: heads={self.heads} is not divisible by kv_heads={self.kv_heads}")
        if self.rope_theta is not None and (isinstance(self.rope_theta, bool) or not isinstance(
                self.rope_theta, (int, float)) or not 0 < self.rope_theta < math.inf):
            raise MoeschedError(f"model {self.name}: rope_theta must be a positive number or None")
        if self.rope_theta is not None and self.hd % 2:
            raise MoeschedError(f"model {self.name}: rotary embeddings need an even head size, got {self.hd}")
        if isinstance(self.norm_eps, bool) or not isinstance(self.norm_eps, (int, float)) or not 0 < self.norm_eps < 1:
            raise MoeschedError(f"model {self.name}: norm_eps must be a number in (0, 1), got {self.norm_eps!r}")
        for f in ("qk_norm", "norm_topk_prob", "tie_embeddings"):
            if not isinstance(getattr(self, f), bool):
                raise MoeschedError(f"model {self.name}: {f} must be true or false, got {getattr(self, f)!r}")
        if self.tie_embeddings and self.vocab_size is None:
            raise MoeschedError(f"model {self.name}: tie_embeddings needs vocab_size")

    # ---- derived sizes -------------------------------------------------------------
    @property
    def n_kv_heads(self) -> int:
        """Key/value heads (heads without grouped-query attention)."""
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def hd(self) -> int:
        """Size of one attention head."""
        return self.d_model // self.heads if self.head_dim is None else self.head_dim

    def attention_params(self) -> int:
        """Attention weights of one layer: Wqkv [(heads + 2 kv_heads) * hd, M], Wo [M, heads * hd],
        and with qk_norm two RMSNorm weights [hd]."""
        qkv = (self.heads + 2 * self.n_kv_heads) * self.hd * self.d_model
        return qkv + self.d_model * self.heads * self.hd + (2 * self.hd if self.qk_norm else 0)

    def embedding_params(self) -> int:
        """Token embedding [V, M], output head [V, M] (none when tied) and final RMSNorm [M]
        of a model with ``vocab_size`` V; 0 without one (blocks only)."""
        if self.vocab_size is None:
            return 0
        return self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2) + self.d_model

    @property
    def bytes_per_elem(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def tokens(self) -> int:
        """Tokens per rank per step, T = B*L."""
        return self.micro_batch * self.seq_len

    @property
    def expert_gemms(self) -> int:
        """GEMMs per expert application: 2 for a GPT FFN, 3 for SwiGLU."""
        return 2 if self.expert_kind == "gpt" else 3

    def slots_per_rank(self, tokens: int | None = None) -> int:
        """Token slots a rank sends through the dispatch all-to-all.

        Dropless: T*k (uniform routing expected). With a capacity factor f, every one of the
        E experts gets ceil(f*k*T/E) padded slots from this rank (GShard, Lepikhin et al. 2020,
        capacity C = f*k*T/E), so T_slots = E*C.
        """
        t = self.tokens if tokens is None else tokens
        if self.capacity_factor is None:
            return t * self.top_k
        return self.experts * math.ceil(self.capacity_factor * self.top_k * t / self.experts)

    def expert_params(self) -> int:
        """Parameters of one routed expert: (2 or 3) * M * H (biases ignored)."""
        return self.expert_gemms * self.d_model * self.ffn_hidden

    def is_dense(self, layer: int) -> bool:
        """Whether layer ``layer`` has a dense FFN (no router, experts or all-to-all)."""
        return layer in self.dense_layers

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """Indices of the MoE layers (all but :attr:`dense_layers`)."""
        return tuple(l for l in range(self.layers) if l not in self.dense_layers)

    def dense_ffn_params(self) -> int:
        """Parameters of the dense FFN of a dense layer: (2 or 3) * M * H_dense (0 without one)."""
        return self.expert_gemms * self.d_model * (self.dense_ffn_hidden or 0)

    def dense_layer_params(self) -> int:
        """Parameters of one dense layer, all reduced over the data-parallel group:
        attention, two norms 2*M, the dense FFN."""
        return self.attention_params() + 2 * self.d_model + self.dense_ffn_params()

    def dense_params_per_layer(self) -> int:
        """Parameters reduced over the data-parallel group per layer.

        Attention 4*M^2 without GQA (QKV and output projection; :meth:`attention_params`),
        two RMS/LayerNorm weights 2*M, router M*E (:func:`moesched.routers.router_params`), shared experts shared*(2 or 3)*M*H.
        """
        m = self.d_model
        return self.attention_params() + 2 * m + routers.router_params(self) + self.shared_experts * self.expert_params()

    def shape_key(self) -> str:
        """What sets a compute task's efficiency besides its token count: a profile may hold
        compute costs per shape key (measured on exactly these matrices). Key/value heads and
        head size appear only where they differ from multi-head attention of M / heads."""
        cf = "dropless" if self.capacity_factor is None else f"f{self.capacity_factor:g}"
        attn = (f"-kv{self.kv_heads}" if self.n_kv_heads != self.heads else "") + \
            (f"-d{self.head_dim}" if self.head_dim is not None and self.head_dim * self.heads != self.d_model else "")
        return (f"M{self.d_model}-h{self.heads}{attn}-L{self.seq_len}-H{self.ffn_hidden}-E{self.experts}"
                f"-k{self.top_k}-{cf}-s{self.shared_experts}-{self.expert_kind}-{self.dtype}")

    def to_dict(self) -> dict[str, Any]:
        """All fields, less the attention/LM fields at their defaults (so a model without them
        has the dict, and a plan the hash, it always had)."""
        d = asdict(self)
        for f in fields(self):
            if f.name in OPTIONAL_FIELDS and d[f.name] == f.default:
                del d[f.name]
        if "dense_layers" in d:
            d["dense_layers"] = list(d["dense_layers"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MoEModel":
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or not names - OPTIONAL_FIELDS <= set(d) <= names:
            extra = sorted(set(d) - names) if isinstance(d, dict) else []
            missing = sorted(names - OPTIONAL_FIELDS - set(d)) if isinstance(d, dict) else sorted(names)
            raise MoeschedError(f"model spec has wrong keys (missing {missing}, unknown {extra})")
        return cls(**d)

    @classmethod
    def from_hf_config(cls, path_or_dict: Any, seq_len: int = 4096, micro_batch: int = 1, dtype: str = "bf16",
                       name: str | None = None) -> "MoEModel":
        """The model of a Hugging Face ``config.json`` (a path, its folder, or the dict) of a
        Mixtral or Qwen3-MoE checkpoint (:mod:`moesched.hfconfig`; unsupported details are
        refused); seq_len and micro_batch are not in the config."""
        from moesched import hfconfig
        kw = hfconfig.model_kwargs(path_or_dict)
        if name is None:
            d = hfconfig.read_config(path_or_dict)
            name = str(d.get("_name_or_path") or (d.get("architectures") or [d.get("model_type")])[0])
        return cls(name=name, seq_len=seq_len, micro_batch=micro_batch, dtype=dtype, **kw)

    def with_layers(self, layers: int) -> "MoEModel":
        """This model with ``layers`` layers (its first ones, or more MoE layers after its
        last): the dense layers past the end are dropped; refused (one line) when every one
        of the first ``layers`` layers is dense."""
        dense = tuple(l for l in self.dense_layers if l < layers)
        if isinstance(layers, int) and 0 < layers == len(dense):
            raise MoeschedError(f"model {self.name}: its first {layers} layer(s) are all dense (dense layers "
                                f"{list(self.dense_layers)}); take at least {layers + 1} layers to keep an MoE layer")
        return replace(self, layers=layers, dense_layers=dense, dense_ffn_hidden=self.dense_ffn_hidden if dense else None)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "MoEModel":
        """Look a preset up by name (case-insensitive), optionally overriding fields (a
        ``layers`` override goes through :meth:`with_layers`)."""
        key = name.lower()
        for preset_name, preset in PRESETS.items():
            if preset_name.lower() == key:
                if "layers" in overrides:
                    preset = preset.with_layers(overrides.pop("layers"))
                return replace(preset, **overrides) if overrides else preset
        close = difflib.get_close_matches(name, list(PRESETS), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(PRESETS)}"
        raise MoeschedError(f"unknown model preset {name!r}{hint}")


def dtype_of_shape(shape: str) -> str:
    """The model dtype of a shape key (:meth:`MoEModel.shape_key`): its last field."""
    return shape.rsplit("-", 1)[-1]


def _p(**kw: Any) -> MoEModel:
    return MoEModel(**kw)


#: Presets. Sources are named per entry; where a paper leaves a size out (sequence
#: length, batch), the value is ours and marked "assumed".
PRESETS: dict[str, MoEModel] = {
    m.name: m
    for m in [
        # FlowMoE (arXiv 2510.00207) Table 2, cluster C1 = 16 GPUs, so E = P = 16 or 2P = 32.
        # seq_len and micro_batch assumed. M=embedding, H=expert hidden.
        _p(name="GPT2-Tiny-MoE", layers=12, d_model=256, heads=4, seq_len=512, micro_batch=8,
           ffn_hidden=512, experts=16, top_k=2, dtype="fp32"),
        _p(name="BERT-Large-MoE", layers=24, d_model=512, heads=8, seq_len=512, micro_batch=8,
           ffn_hidden=1024, experts=32, top_k=1, dtype="fp32"),
        _p(name="LLaMA2-MoE", layers=32, d_model=1024, heads=16, seq_len=1024, micro_batch=4,
           ffn_hidden=4096, experts=16, top_k=1, expert_kind="swiglu", dtype="fp32"),
        _p(name="DeepSeek-V2-S", layers=4, d_model=5120, heads=40, seq_len=1024, micro_batch=2,
           ffn_hidden=1536, experts=32, top_k=8, expert_kind="swiglu", dtype="fp32"),
        # FSMoE (arXiv 2501.10714) Sec. 5: B=1, k=2, f=1.2; L=1024 on testbed A.
        # GPT2-XL shape (48 x 1600, 25 heads, FFN 4M); experts assumed 16.
        _p(name="GPT2-XL-MoE", layers=48, d_model=1600, heads=25, seq_len=1024, micro_batch=1,
           ffn_hidden=6400, experts=16, top_k=2, capacity_factor=1.2),
        # "Mixtral-7B" as FSMoE ran it on testbed B: 7 layers, L=256, Mixtral-8x7B layer shapes.
        _p(name="Mixtral-7B-FSMoE", layers=7, d_model=4096, heads=32, seq_len=256, micro_batch=1,
           ffn_hidden=14336, experts=8, top_k=2, capacity_factor=1.2, expert_kind="swiglu"),
        # Published configs (Hugging Face config.json of each checkpoint: grouped-query
        # attention, head size, rotary base, norm epsilon, vocabulary, dense first layers);
        # seq_len and micro_batch assumed. Mixtral-8x7B-v0.1: 46.7 B parameters.
        _p(name="Mixtral-8x7B", layers=32, d_model=4096, heads=32, seq_len=4096, micro_batch=1,
           ffn_hidden=14336, experts=8, top_k=2, expert_kind="swiglu", kv_heads=8, rope_theta=1e6,
           norm_eps=1e-5, vocab_size=32000),
        # Mixtral-8x22B-v0.1: 141 B parameters.
        _p(name="Mixtral-8x22B", layers=56, d_model=6144, heads=48, seq_len=4096, micro_batch=1,
           ffn_hidden=16384, experts=8, top_k=2, expert_kind="swiglu", kv_heads=8, rope_theta=1e6,
           norm_eps=1e-5, vocab_size=32000),
        # DeepSeek-V2-Lite: 15.7 B parameters; layer 0 dense (first_k_dense_replace 1,
        # intermediate_size 10944); greedy softmax top-6 without renormalisation. Its
        # multi-head latent attention is approximated by multi-head attention of the same
        # 16 heads of 128 (q/k/v/o weights 16.8 M against MLA's 13.8 M per layer, the same
        # score and value FLOPs up to MLA's 64-wide rotary part of q and k).
        _p(name="DeepSeek-V2-Lite", layers=27, d_model=2048, heads=16, seq_len=4096, micro_batch=1,
           ffn_hidden=1408, experts=64, top_k=6, shared_experts=2, expert_kind="swiglu", norm_topk_prob=False,
           rope_theta=1e4, vocab_size=102400, dense_layers=(0,), dense_ffn_hidden=10944),
        # Qwen3-30B-A3B: 30.5 B parameters; 32 query heads of 128 over d_model 2048, 4 kv heads.
        _p(name="Qwen3-30B-A3B", layers=48, d_model=2048, heads=32, seq_len=4096, micro_batch=1,
           ffn_hidden=768, experts=128, top_k=8, expert_kind="swiglu", kv_heads=4, head_dim=128,
           qk_norm=True, rope_theta=1e6, vocab_size=151936),
    ]
}
