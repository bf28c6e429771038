"""A causal LM's forward split into its body (final hidden states) and its lm_head, for the chunked
losses of kdbench/chunked.py. Models whose logits are more than ``lm_head(hidden)`` (logit scaling or
soft-capping) or whose head is not a plain Linear (e.g. a LoRA-wrapped lm_head) are not split: the
caller then materialises the logits as before."""
from __future__ import annotations

import torch

from .chunked import LazyLogits, rows_per_chunk
from .config import TrainConfig

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


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   vocab_size: int | None) -> LazyLogits:
    """The model's logits as LazyLogits: split when it can be (hidden states + head), else the
    dense logits cut to the real vocabulary. Scoring code then takes only the rows it needs, a
    chunk at a time, whichever the model is."""
    lazy = lazy_forward(model, input_ids, attention_mask, vocab_size)
    if lazy is not None:
        return lazy
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    if vocab_size is not None and logits.shape[-1] > vocab_size:  # padded embedding rows are not tokens
        logits = logits[..., :vocab_size]
    return LazyLogits.dense(logits)


def eval_chunk_rows(vocab: int) -> int:
    """Rows per lm_head chunk when scoring for a metric: the training default's element budget
    (TrainConfig.loss_chunk_tokens x loss_chunk_elements), so an evaluation's [rows, V] temporaries
    stay at tens of MB whatever the vocabulary and the batch."""
    return rows_per_chunk(vocab, TrainConfig.loss_chunk_tokens, TrainConfig.loss_chunk_elements)


def model_vocab(out: LazyLogits) -> int:
    """The vocabulary width of `out`'s logits (its head's rows, cut to vocab_size)."""
    if out.logits is not None:
        return int(out.logits.shape[-1])
    rows = int(out.weight.shape[0])
    return min(rows, out.vocab_size) if out.vocab_size else rows
