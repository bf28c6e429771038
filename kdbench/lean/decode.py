"""Token-by-token decoding that calls a decoder's weights directly over a preallocated KV cache.

At the sizes kdbench trains on a CPU, a decode step of transformers' forward is mostly per-call
overhead: module dispatch, mask and cache bookkeeping, output dataclasses. On the bench_vs_trl student
(64 wide, 2 layers, batch 16, 1 thread) a step here is 2.53x [2.27, 2.81] as fast as through transformers
(benchmarks/bench_lean.py, 2026-12-02). The arithmetic is the same: the same weights in the same order of
operations up to float rounding, checked against transformers' forward for every architecture file in
tests/engine/test_lean.py.

An architecture is one file with a class, built from (model, longest sequence), that reads the model's
modules and provides `embed`, `block` and `head` (see gpt2.py, llama.py, docs/speed.md); `ARCHITECTURES`
maps transformers' class names to those classes. Anything else (another family, a LoRA- or
quantisation-wrapped layer, an option the file does not implement, offloaded or sharded weights, active
dropout) gets `None` from `lean_stepper`, and the sampler keeps transformers' forward.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..weights import has_sharded_weights

log = logging.getLogger("kdbench")

ARCHITECTURES: dict[str, type] = {}
# sdpa's enable_gqa came with torch 2.5
_TORCH_OK = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def register(*class_names: str):
    def deco(cls):
        for name in class_names:
            ARCHITECTURES[name] = cls
        return cls
    return deco


def unsupported(model) -> str | None:
    """Why `model` cannot take the lean path, or None when it can."""
    if not _TORCH_OK:
        return "torch < 2.5"
    if hasattr(model, "get_base_model"):
        return "a peft-wrapped model (its adapters are not in the base weights)"
    arch = ARCHITECTURES.get(type(model).__name__)
    if arch is None:
        return f"no lean decoder for {type(model).__name__}"
    modules = list(model.modules())  # walked once: this runs for every sampled batch and teacher forward
    params = [p for m in modules for p in m._parameters.values() if p is not None]
    if not params or any(p.is_meta for p in params) or len({p.device for p in params}) > 1:
        return "weights not all on one device"
    if any("_hf_hook" in m.__dict__ for m in modules):
        return "accelerate hooks (offloaded or dispatched weights)"
    if has_sharded_weights(model, params) or any(p.numel() == 0 for p in params):
        return "sharded weights (FSDP / DeepSpeed)"
    if model.training and (any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in modules)
                           or (getattr(model.config, "attention_dropout", 0) or 0) > 0):
        return "dropout is active"
    return arch.unsupported(model)


def lean_stepper(model, ids: torch.Tensor, att: torch.Tensor, max_new: int) -> "LeanStepper | None":
    """A LeanStepper for `model`, or None when its architecture or setup is not covered."""
    why = unsupported(model)
    if why is not None:
        log.debug("sampling through transformers' forward: %s", why)
        return None
    return LeanStepper(ARCHITECTURES[type(model).__name__](model, ids.shape[1] + max_new), ids, att, max_new)


class LeanStepper:
    """The sampler's stepper interface (kdbench.sampling): after construction `logits` holds the prompt's
    last-position logits [B, V] (fp32); `step(tokens)` feeds one token per row and updates them.

    Prompts are left-padded: position ids count real tokens only (as the sampler's transformers path
    passes them) and padded keys are masked. A padded prompt position also attends to itself: with every
    key masked, sdpa returns zeros on some backends and NaN on others (MPS before torch 2.9), and its NaN
    keys and values, cached, would reach every later query (0 x NaN). Real queries never see it."""

    def __init__(self, arch, ids: torch.Tensor, att: torch.Tensor, max_new: int):
        self.arch = arch
        dev, dtype = arch.device, arch.dtype
        B, L = ids.shape
        n = L + max_new
        shape = (arch.n_layers, B, arch.n_kv_heads, n, arch.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=dev)
        self.v = torch.zeros(shape, dtype=dtype, device=dev)
        self.k_layers = [self.k[i] for i in range(arch.n_layers)]  # per-layer views, taken once
        self.v_layers = [self.v[i] for i in range(arch.n_layers)]
        keys = torch.zeros((B, 1, 1, n), dtype=torch.bool, device=dev)  # keys written so far, pads off
        att = att.to(dev)
        keys[:, 0, 0, :L] = att.bool()
        # the decode steps' mask in sdpa's additive float form, kept up to date in place: sdpa would
        # otherwise convert a boolean mask in every layer of every step
        self.bias = torch.zeros((B, 1, 1, n), dtype=dtype, device=dev).masked_fill_(~keys, float("-inf"))
        self.gqa = arch.n_heads != arch.n_kv_heads
        self.n = 0
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones((L, L), dtype=torch.bool, device=dev).tril()
        prompt_mask = (keys[:, :, :, :L] & causal) | torch.eye(L, dtype=torch.bool, device=dev)
        self.logits = self._forward(ids.to(dev), pos, prompt_mask)
        self.next_pos = pos[:, -1:] + 1

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s, e = self.n, self.n + ids.shape[1]
        k_all, v_all, gqa = self.k_layers, self.v_layers, self.gqa

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            """q [B, H, T, D] against the cache after writing this call's k, v [B, H_kv, T, D]."""
            k_i, v_i = k_all[i], v_all[i]
            k_i[:, :, s:e] = k
            v_i[:, :, s:e] = v
            return F.scaled_dot_product_attention(q, k_i[:, :, :e], v_i[:, :, :e], attn_mask=mask, enable_gqa=gqa)

        x, ctx = self.arch.embed(ids, pos)
        for i in range(self.arch.n_layers):
            x = self.arch.block(i, x, ctx, attend)
        self.n = e
        return self.arch.head(x[:, -1]).float()

    def step(self, tokens: torch.Tensor) -> None:
        self.bias[:, 0, 0, self.n] = 0.0  # this step's key
        self.logits = self._forward(tokens.to(self.bias.device)[:, None], self.next_pos,
                                    self.bias[:, :, :, : self.n + 1])
        self.next_pos = self.next_pos + 1


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, T, H * D] -> [B, H, T, D]."""
    B, T, _ = x.shape
    return x.view(B, T, n_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, D] -> [B, T, H * D]."""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)
