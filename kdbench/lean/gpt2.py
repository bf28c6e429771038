"""GPT-2 (transformers' GPT2LMHeadModel) for the lean decoder: pre-LayerNorm blocks, fused QKV in a
Conv1D ([in, out] weights), learned positions, attention scaled by 1/sqrt(head_dim)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .decode import merge_heads, register, split_heads


def _conv1d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """transformers' Conv1D: x @ W + b with W stored [in, out]."""
    shape = x.shape[:-1]
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), w).view(*shape, -1)


def _function(act):
    """The fused GELU module as its function (one module call less per layer and step), else the module."""
    from .activations import FusedTanhGELU

    return (lambda x: F.gelu(x, approximate="tanh")) if type(act) is FusedTanhGELU else act


@register("GPT2LMHeadModel")
class GPT2:
    @staticmethod
    def unsupported(model) -> str | None:
        from transformers.pytorch_utils import Conv1D

        c = model.config
        if not getattr(c, "scale_attn_weights", True) or getattr(c, "scale_attn_by_inverse_layer_idx", False) \
                or getattr(c, "reorder_and_upcast_attn", False) or getattr(c, "add_cross_attention", False):
            return "a GPT-2 attention option the lean decoder does not implement"
        for blk in model.transformer.h:
            if any(type(m) is not Conv1D for m in (blk.attn.c_attn, blk.attn.c_proj, blk.mlp.c_fc, blk.mlp.c_proj)):
                return "a wrapped or replaced GPT-2 projection"
        if any(type(e) is not torch.nn.Embedding or e.max_norm is not None
               for e in (model.transformer.wte, model.transformer.wpe)):
            return "a replaced GPT-2 embedding"
        head = model.lm_head
        if type(head) is not torch.nn.Linear or head.bias is not None:
            return "a non-plain lm_head"
        return None

    def __init__(self, model, max_len: int):
        t = model.transformer
        self.t, self.head_w = t, model.lm_head.weight
        # the tensors each block reads, looked up once per generation rather than through nn.Module
        # attribute access at every step (the same Parameter objects: nothing is copied)
        self.blocks = [(b.ln_1.weight, b.ln_1.bias, b.ln_1.eps, b.attn.c_attn.weight, b.attn.c_attn.bias,
                        b.attn.c_proj.weight, b.attn.c_proj.bias, b.ln_2.weight, b.ln_2.bias, b.ln_2.eps,
                        b.mlp.c_fc.weight, b.mlp.c_fc.bias, _function(b.mlp.act), b.mlp.c_proj.weight,
                        b.mlp.c_proj.bias)
                       for b in t.h]
        self.n_layers = len(self.blocks)
        self.n_heads = self.n_kv_heads = model.config.n_head
        self.head_dim = model.config.n_embd // self.n_heads
        self.device, self.dtype = t.wte.weight.device, t.wte.weight.dtype

    def embed(self, ids, pos):
        return F.embedding(ids, self.t.wte.weight) + F.embedding(pos, self.t.wpe.weight), None

    def block(self, i, x, ctx, attend):
        ln1_w, ln1_b, eps1, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, eps2, fc_w, fc_b, act, out_w, out_b = self.blocks[i]
        C, H = x.shape[-1], self.n_heads
        q, k, v = _conv1d(F.layer_norm(x, (C,), ln1_w, ln1_b, eps1), qkv_w, qkv_b).split(C, dim=-1)
        x = x + _conv1d(merge_heads(attend(i, split_heads(q, H), split_heads(k, H), split_heads(v, H))), o_w, o_b)
        h = F.layer_norm(x, (C,), ln2_w, ln2_b, eps2)
        return x + _conv1d(act(_conv1d(h, fc_w, fc_b)), out_w, out_b)

    def final_norm(self, x):
        f = self.t.ln_f
        return F.layer_norm(x, x.shape[-1:], f.weight, f.bias, f.eps)

    def head(self, x):
        return F.linear(self.final_norm(x), self.head_w)
