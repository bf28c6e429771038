"""A causal LM's forward split into its body (final hidden states) and its lm_head, for the chunked
losses of kdbench/chunked.py. Models whose logits are more than ``lm_head(hidden)`` (logit scaling or
soft-capping) or whose head is not a plain Linear (e.g. a LoRA-wrapped lm_head) are not split: the
caller then materialises the logits as before."""
from __future__ import annotations

import torch

from .chunked import LazyLogits

# config attributes that post-process lm_head's output in some architectures (Gemma 2/3, Cohere, ...)
_POSTPROCESS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


def split_model(model):
    """(body, head) of a causal LM, or None when its logits are not exactly head(body(x))."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    body = getattr(inner, "base_model", None)
    if type(head) is not torch.nn.Linear or body is None or body is inner:
        return None
    cfg = getattr(inner, "config", None)
    if any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in _POSTPROCESS):
        return None
    return body, head


def lazy_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 vocab_size: int | None) -> LazyLogits | None:
    """The model's logits as LazyLogits (hidden states + head), or None if it cannot be split."""
    parts = split_model(model)
    if parts is None:
        return None
    body, head = parts
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return LazyLogits(hidden, head.weight, head.bias, vocab_size)
