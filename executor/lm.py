"""A language model around the planned MoE blocks: token embedding, the blocks the plan
schedules, final RMSNorm, output head and a loss over the logits.

Set-up (every rank, under ``torchrun``; gloo on CPUs, NCCL on GPUs)::

    dist.init_process_group("gloo")                      # or "nccl" + torch.cuda.set_device
    plan = Plan.load("plan.json")                         # plan.model.vocab_size set
    ep = plan.cluster.ep_size
    lm = MoELM(plan.model, ep=ep, ep_rank=dist.get_rank() % ep)
    step = LMStep(lm, plan)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-3)
    for tokens, targets in batches:                       # [B, L] int64 each, on lm.device
        loss = step(tokens, targets)                      # forward + backward, by the plan
        opt.step(); opt.zero_grad()

The plan covers the MoE blocks. The embedding runs before its first task; the final norm,
the head and the loss run inside its "loss" task (the last block's output is complete
there), which seeds the blocks' backward; the embedding's gradient comes from the first
block's input gradient. Gradients of the embedding, final norm and head are summed over all
ranks after the step (one all-reduce). Each rank's loss is ``loss_fn(logits [T, V],
targets [T])`` (cross-entropy by default), T = B*L; the step's loss is the mean over ranks.

Gradients accumulate over calls as in plain torch: a parameter's ``.grad`` is added to
until the optimizer's ``zero_grad()`` sets it to None (or zero).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from moesched.errors import MoeschedError
from moesched.models import MoEModel
from moesched.plan import Plan

from executor.layers import MoEModule, ReferenceModel, _randn, rmsnorm
from executor.runtime import PlannedStep

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MoELM(nn.Module):
    """Embedding [V, M], the rank's MoE blocks (``self.moe``, :class:`MoEModule`), final norm
    [M] and head [V, M] (absent when ``model.tie_embeddings``: the embedding is the head)."""

    def __init__(self, m: MoEModel, ep: int = 1, ep_rank: int = 0, seed: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
        super().__init__()
        if m.vocab_size is None:
            raise MoeschedError(f"model {m.name}: a language model needs vocab_size")
        self.cfg = m
        self.moe = MoEModule(m, ep=ep, ep_rank=ep_rank, seed=seed, device=device, dtype=dtype)
        dev, dt = self.moe.device, self.moe.dtype
        V, M = m.vocab_size, m.d_model
        self.embed = nn.Parameter(_randn((V, M), 1.0, seed, "embed", dev, dt))
        self.norm = nn.Parameter(torch.ones(M, device=dev, dtype=dt))
        self.head = None if m.tie_embeddings else nn.Parameter(_randn((V, M), 1 / math.sqrt(M), seed, "head", dev, dt))

    @property
    def device(self) -> torch.device:
        return self.moe.device

    def outer_params(self) -> list[nn.Parameter]:
        """The parameters outside the plan: embed, norm, [head]."""
        return [self.embed, self.norm] + ([self.head] if self.head is not None else [])

    def logits(self, y: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] of the last block's output y [..., M] (final norm, head)."""
        w = self.embed if self.head is None else self.head
        return rmsnorm(y, self.norm, self.cfg.norm_eps) @ w.t()


def _check_tokens(name: str, t: object, lm: MoELM) -> torch.Tensor:
    m = lm.cfg
    shape = (m.micro_batch, m.seq_len)
    if not isinstance(t, torch.Tensor):
        raise MoeschedError(f"{name} must be a torch.Tensor of token ids, got {type(t).__name__}")
    if t.dtype not in (torch.int64, torch.int32):
        raise MoeschedError(f"{name} must hold integer token ids (int64 or int32), got {t.dtype}")
    if tuple(t.shape) != shape:
        raise MoeschedError(f"{name} must have shape [micro_batch, seq_len] = {list(shape)}, got {list(t.shape)}")
    if t.device != lm.device:
        raise MoeschedError(f"{name} is on {t.device} but the model is on {lm.device}")
    return t.long()


class _Head:
    """The plan's loss task for a language model: (y [T, M], world) -> (loss_r, dy [T, M]);
    keeps the gradients of the outer parameters it used (norm, head or tied embedding)."""

    def __init__(self, lm: MoELM, targets: torch.Tensor, loss_fn: LossFn, keep_logits: bool = False):
        self.lm, self.targets, self.loss_fn = lm, targets.reshape(-1), loss_fn
        self.grads: list[torch.Tensor] = []
        self.keep_logits = keep_logits
        self.logits: torch.Tensor | None = None

    def __call__(self, y: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor]:
        lm = self.lm
        ps = [lm.norm, lm.embed if lm.head is None else lm.head]
        with torch.enable_grad():
            yl = y.detach().requires_grad_()
            logits = lm.logits(yl).float()
            loss = self.loss_fn(logits, self.targets)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise MoeschedError("the loss function must return a scalar tensor")
            g = torch.autograd.grad(loss / world, [yl] + ps)
        self.grads = list(g[1:])
        if self.keep_logits:
            self.logits = logits.detach()
        return loss.detach(), g[0].to(y.dtype)


class LMStep:
    """``loss = step(tokens, targets)``: one micro-batch's forward and backward by the plan
    (module docstring). tokens, targets [micro_batch, seq_len] integer ids on the model's
    device; returns the loss (a 0-d float32 tensor, mean over ranks). ``loss_fn(logits
    [T, V] fp32, targets [T]) -> scalar`` replaces cross-entropy. Other keyword arguments go
    to :class:`PlannedStep` (``self.planned``: timeline(), routing(), ...). With
    ``keep_logits`` the last step's logits [T, V] (fp32, detached) stay in ``self.logits``."""

    def __init__(self, lm: MoELM, plan: Plan, loss_fn: LossFn | None = None, keep_logits: bool = False, **kw):
        if lm.cfg != plan.model:
            raise MoeschedError("the language model's model differs from the plan's model")
        self.lm = lm
        self.loss_fn = loss_fn or F.cross_entropy
        self.keep_logits = keep_logits
        self.logits: torch.Tensor | None = None
        self.planned = PlannedStep(lm.moe, plan, **kw)
        m = plan.model
        self.planned.input_grad = torch.zeros(m.tokens, m.d_model, device=lm.device, dtype=lm.moe.dtype)

    def _block_params(self) -> list[nn.Parameter]:
        return [p for blk in self.lm.moe.blocks for p in blk.dense_params() + blk.expert_params()]

    def __call__(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        lm, ps = self.lm, self.planned
        tokens, targets = _check_tokens("tokens", tokens, lm), _check_tokens("targets", targets, lm)
        V = lm.cfg.vocab_size
        if int(tokens.min()) < 0 or int(tokens.max()) >= V:
            raise MoeschedError(f"token ids must lie in [0, {V})")
        views = ps._views
        keep = all(p.grad is not None and p.grad.data_ptr() == views[id(p)].data_ptr() for p in self._block_params())
        prev = {k: f.clone() for k, f in ps.flat.items()} if keep else None  # the step zeroes them
        with torch.no_grad():
            x = F.embedding(tokens, lm.embed)
        head = _Head(lm, targets, self.loss_fn, self.keep_logits)
        ps.head = head
        try:
            loss = ps(x, targets)
        finally:
            ps.head = None
        if prev is not None:
            for k, f in ps.flat.items():
                f.add_(prev[k])
        self.logits = head.logits
        self._outer_grads(tokens, head.grads)
        return torch.tensor(loss, dtype=torch.float32)

    @torch.no_grad()
    def _outer_grads(self, tokens: torch.Tensor, head_grads: list[torch.Tensor]) -> None:
        """Sum this step's embedding, norm and head gradients over all ranks; add to .grad."""
        lm = self.lm
        g_norm, g_out = head_grads
        g_emb = torch.zeros_like(lm.embed).index_add_(0, tokens.reshape(-1), self.planned.input_grad)
        if lm.head is None:
            g_emb += g_out
        gs = [g_emb, g_norm] + ([g_out] if lm.head is not None else [])
        flat = torch.cat([g.reshape(-1) for g in gs])
        dist.all_reduce(flat, group=self.planned.groups.dense)
        o = 0
        for p, g in zip(lm.outer_params(), gs):
            part = flat[o:o + g.numel()].view_as(p)
            o += g.numel()
            if p.grad is None:
                p.grad = part.clone()
            else:
                p.grad.add_(part)


class ReferenceLM:
    """Plain single-process language model with all experts and the same initial values as
    :class:`MoELM` (same seed): the mean over ranks of each rank's loss, by autograd."""

    def __init__(self, m: MoEModel, seed: int = 0, dtype: torch.dtype = torch.float32,
                 loss_fn: LossFn | None = None):
        self.lm = MoELM(m, ep=1, ep_rank=0, seed=seed, device="cpu", dtype=dtype)
        self.blocks = ReferenceModel(m, module=self.lm.moe)
        self.loss_fn = loss_fn or F.cross_entropy

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, L, V] of tokens [B, L]."""
        return self.lm.logits(self.blocks.blocks(F.embedding(tokens, self.lm.embed)))

    def loss(self, tokens: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
        """Mean over ranks of loss_fn(logits, targets) of every rank's batch, plus its
        auxiliary router losses."""
        V = self.lm.cfg.vocab_size
        return sum(self.loss_fn(self.logits(t).reshape(-1, V).float(), y.reshape(-1)) + self.blocks.aux
                   for t, y in zip(tokens, targets)) / len(tokens)

