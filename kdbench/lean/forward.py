"""A whole-sequence forward without gradient (a teacher scoring a batch, an LM-loss metric) that calls the
weights directly through the same architecture files as the lean decoder (gpt2.py, llama.py).

transformers' forward builds a 4-D mask from the attention mask, dispatches a dozen modules per layer
and wraps outputs in dataclasses on every call: on the bench_vs_trl teacher (GPT-2 128 wide x 4 layers,
16 x 34 tokens, 1 thread) this forward is 1.11x [1.06, 1.15] as fast, and within noise on SmolLM2-135M,
whose matmuls dominate (`benchmarks/bench_lean.py`, no-grad forward rows).
Here attention is causal only, which is exact for every real position of a right-padded row (a prefix
of real tokens: no real query ever sees a later padding key). Positions past a row's length are not
transformers' values (its padded queries see no padding keys); nothing reads them (the losses and
metrics mask them, and `kdbench.hidden.trimmed` already returns zeros there). Any other mask (left
padding, holes) and anything the decoder does not cover (`decode.unsupported`) keep transformers' forward.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .decode import ARCHITECTURES, unsupported


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """Each row a prefix of ones, then zeros."""
    L = attention_mask.shape[-1]
    lengths = attention_mask.sum(-1, keepdim=True)
    return bool(torch.equal((torch.arange(L, device=attention_mask.device) < lengths).to(attention_mask.dtype),
                            attention_mask))


def lean_forward(model, logits: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None] | None:
    """fn(input_ids, attention_mask) -> the model's logits (`logits`) or its final hidden states (after
    the final norm: what `lm_head` reads) [B, L, .], or None from fn for a mask that is not right-padded
    (the caller then runs transformers' forward). None itself while autograd records (gradient forwards
    keep transformers' forward) or when the model is not covered (`decode.unsupported`)."""
    if torch.is_grad_enabled() or unsupported(model) is not None:
        return None
    cls = ARCHITECTURES[type(model).__name__]

    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        if mask is not None and not is_right_padded(mask):
            return None
        B, L = ids.shape
        arch = cls(model, L)
        ids = ids.to(arch.device)
        gqa = arch.n_heads != arch.n_kv_heads

        def attend(i, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

        x, ctx = arch.embed(ids, torch.arange(L, device=arch.device)[None].expand(B, L))
        for i in range(arch.n_layers):
            x = arch.block(i, x, ctx, attend)
        return arch.head(x) if logits else arch.final_norm(x)

    return run
