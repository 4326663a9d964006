"""Hugging Face ``safetensors`` weights (Mixtral, Qwen3-MoE) into a rank's :class:`executor.lm.MoELM`.

``load_hf_weights(lm, folder)`` reads ``model.safetensors`` or the shards named by
``model.safetensors.index.json``; every rank reads the dense weights and only the routed
experts it holds ([ep_rank*El, (ep_rank+1)*El), El = E/ep; per-expert tensors are opened
one by one, fused ones sliced). Names (``model.layers.{l}.`` prefix)::

    input_layernorm -> norm1            self_attn.{q,k,v}_proj -> wqkv (rows q, k, v)
    self_attn.o_proj -> wo              self_attn.{q,k}_norm -> q_norm, k_norm (Qwen3)
    post_attention_layernorm -> norm2   {block_sparse_moe|mlp}.gate -> wg
    experts.{e}.w1|gate_proj -> w1      experts.{e}.w3|up_proj -> w3
    experts.{e}.w2|down_proj -> w2      (or fused experts.gate_up_proj [E, 2H, M], experts.down_proj)
    model.embed_tokens -> embed         model.norm -> norm        lm_head -> head (untied)
    dense layers: mlp.gate_proj -> sw1, mlp.up_proj -> sw3, mlp.down_proj -> sw2

``safetensors`` is imported when called (it is in the ``test`` extra, not a dependency).
"""
from __future__ import annotations

import json
import os
import torch

from moesched.errors import MoeschedError

from executor.lm import MoELM


class Reader:
    """Tensors of a safetensors checkpoint by name, each file opened once."""

    def __init__(self, path: str | os.PathLike):
        from safetensors import safe_open
        path = os.fspath(path)
        single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(path):
            files = {path: None}
        elif os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                wm = json.load(f)["weight_map"]
            files = {os.path.join(path, v): None for v in sorted(set(wm.values()))}
        elif os.path.isfile(single):
            files = {single: None}
        else:
            raise MoeschedError(f"no model.safetensors or model.safetensors.index.json in {path}")
        self.where: dict[str, object] = {}
        self._open = []
        for fn in files:
            h = safe_open(fn, framework="pt")
            self._open.append(h)
            for k in h.keys():
                self.where[k] = h

    def has(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """The tensor (or rows of its first dimension) named name."""
        if name not in self.where:
            raise MoeschedError(f"weight {name} is missing from the checkpoint")
        h = self.where[name]
        return h.get_tensor(name) if rows is None else h.get_slice(name)[rows]

    def first(self, *names: str) -> str:
        for n in names:
            if n in self.where:
                return n
        raise MoeschedError(f"weight {names[0]} is missing from the checkpoint")


def _put(p: torch.nn.Parameter, t: torch.Tensor, name: str) -> None:
    if tuple(t.shape) != tuple(p.shape):
        raise MoeschedError(f"weight {name} has shape {list(t.shape)}, the model needs {list(p.shape)}")
    with torch.no_grad():
        p.copy_(t.to(p.dtype))


def _experts(r: Reader, pre: str, e0: int, e1: int, H: int) -> dict[str, torch.Tensor]:
    """w1, w3, w2 of experts [e0, e1) stacked: per-expert or fused tensors."""
    fused = pre + "experts.gate_up_proj"
    if r.has(fused):
        gu = r.get(fused, slice(e0, e1))
        return {"w1": gu[:, :H], "w3": gu[:, H:], "w2": r.get(pre + "experts.down_proj", slice(e0, e1))}
    out = {}
    for mine, names in (("w1", ("w1", "gate_proj")), ("w3", ("w3", "up_proj")), ("w2", ("w2", "down_proj"))):
        out[mine] = torch.stack([r.get(r.first(*(f"{pre}experts.{e}.{n}.weight" for n in names)))
                                 for e in range(e0, e1)])
    return out


def _dense_mlp(r: Reader, pre: str, blk: torch.nn.Module) -> None:
    """A dense layer's FFN: mlp.{gate,up,down}_proj -> sw1, sw3, sw2."""
    for mine, n in (("sw1", "gate_proj"), ("sw3", "up_proj"), ("sw2", "down_proj")):
        _put(getattr(blk, mine), r.get(f"{pre}{n}.weight"), f"{pre}{n}.weight")


def load_hf_weights(lm: MoELM, path: str | os.PathLike, reader: Reader | None = None) -> None:
    """Copy the checkpoint's weights into lm (this rank's experts only); refuses missing
    weights and wrong shapes with one line."""
    r = reader or Reader(path)
    m, mod = lm.cfg, lm.moe
    el = m.experts // mod.ep
    e0 = mod.ep_rank * el
    for l, blk in enumerate(mod.blocks):
        b = f"model.layers.{l}."
        moe = b + ("block_sparse_moe." if r.has(b + "block_sparse_moe.gate.weight") else "mlp.")
        _put(blk.norm1, r.get(b + "input_layernorm.weight"), b + "input_layernorm.weight")
        qkv = torch.cat([r.get(f"{b}self_attn.{n}_proj.weight") for n in "qkv"])
        _put(blk.wqkv, qkv, b + "self_attn.{q,k,v}_proj.weight")
        _put(blk.wo, r.get(b + "self_attn.o_proj.weight"), b + "self_attn.o_proj.weight")
        if m.qk_norm:
            _put(blk.q_norm, r.get(b + "self_attn.q_norm.weight"), b + "self_attn.q_norm.weight")
            _put(blk.k_norm, r.get(b + "self_attn.k_norm.weight"), b + "self_attn.k_norm.weight")
        _put(blk.norm2, r.get(b + "post_attention_layernorm.weight"), b + "post_attention_layernorm.weight")
        if blk.dense:
            _dense_mlp(r, b + "mlp.", blk)
            continue
        _put(blk.wg, r.get(moe + "gate.weight"), moe + "gate.weight")
        ex = _experts(r, moe, e0, e0 + el, m.ffn_hidden)
        for n, t in ex.items():
            _put(getattr(blk, n), t, f"{moe}experts.*.{n}")
    _put(lm.embed, r.get("model.embed_tokens.weight"), "model.embed_tokens.weight")
    _put(lm.norm, r.get("model.norm.weight"), "model.norm.weight")
    if lm.head is not None:
        _put(lm.head, r.get("lm_head.weight"), "lm_head.weight")


def named_params(lm: MoELM) -> list[tuple[str, torch.nn.Parameter]]:
    """(label, parameter) of every parameter of lm, for comparisons."""
    out = [("embed", lm.embed), ("norm", lm.norm)] + ([("head", lm.head)] if lm.head is not None else [])
    for l, blk in enumerate(lm.moe.blocks):
        out += [(f"L{l}.{n}", p) for n, p in blk.named_parameters()]
    return out
