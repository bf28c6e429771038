"""Test LM loss: teacher-forced cross-entropy of the evaluated model on the gold responses.

MiniLLM logs it next to Rouge-L (its "knowledge coverage" column): how much probability the model
still gives the human answer, independent of what it samples. Ours is the mean over response tokens
of -log q(y_t | prompt, y_<t), EOS included, one token one vote over the whole test set (MiniLLM
averages per batch, which weights short batches more). The gold response is the example's first
reference, so multi-reference tasks score the same answer on every run.

Per example it records `lm_loss.nll` (summed nats over the response tokens, accumulated in fp64)
and `lm_loss.tokens`; recompute gives sum(nll) / sum(tokens) over the rows (token-weighted, so
not a plain mean). The cell value itself keeps its historical form (fp32 sums per batch), so it
matches the recompute to fp32 accumulation error (relative ~1e-7), not bit for bit: switching the
cell to the fp64 per-example sums would make it exact but moves existing numbers in the 7th digit.
"""
from __future__ import annotations

import weakref
from typing import Any, Sequence

import numpy as np
import torch

from ..data import IGNORE, collate, encode_pair
from ..chunked import chunked_logprobs
from ..hidden import eval_chunk_rows, forward_logits, model_vocab
from ..models import vocab_size_of
from .base import EvalContext, register_metric


def model_max_positions(model) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def eval_lengths(ctx: EvalContext) -> tuple[int, int]:
    """(max_prompt, max_total) tokens for teacher-forced scoring in this evaluation: the prompt
    limit plus the generation limit, capped by what the model can attend to."""
    max_prompt = int(ctx.max_prompt_length or 256)
    max_new = int(getattr(ctx.eval_config, "max_new_tokens", 256) or 256)
    total = max_prompt + max_new
    cap = model_max_positions(ctx.model)
    return max_prompt, min(total, cap) if cap else total


@torch.no_grad()
def score_pairs(model, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 32,
                vocab_size: int | None = None) -> tuple[float, list[float], list[int]]:
    """(mean nats per response token, per-pair summed nats, per-pair scored tokens) of `model` on
    (prompt_ids, response_ids) pairs.

    The response ids include EOS (as `encode_pair` returns them); prompt tokens carry no loss.
    `vocab_size` cuts padded embedding rows off the logits, as training does (`slice_vocab`).
    """
    if not pairs:
        raise ValueError("lm_loss: no (prompt, response) pairs")
    if batch_size < 1:
        raise ValueError(f"lm_loss: batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    total, n = 0.0, 0
    nll: list[float] = []
    tokens: list[int] = []
    for s in range(0, len(pairs), batch_size):
        batch = collate(pairs[s: s + batch_size], pad_id)
        labels = batch.labels.to(device)
        # only the response rows' logits, a chunk at a time: never the batch's [B, L, V] (at V = 49k a
        # batch of 25 x 256 tokens would be 1.3 GB, and its log-softmax as much again)
        out = forward_logits(model, batch.input_ids.to(device), batch.attention_mask.to(device), vocab_size,
                             trim=True)
        tok = -chunked_logprobs(out, labels, eval_chunk_rows(vocab_size or model_vocab(out)))  # [B, L], 0 off labels
        # fp32 and a sum (not a per-batch mean): the result must not depend on batch size or dtype
        total += float(tok.sum())
        n += int((labels != IGNORE).sum())
        nll += tok.double().sum(dim=1).tolist()
        tokens += (labels != IGNORE).sum(dim=1).tolist()
    if n == 0:
        raise ValueError("lm_loss: every response is empty after truncation")
    return total / n, nll, tokens


def weights_version(model) -> tuple:
    """Changes whenever a parameter is modified in place (an optimiser step, load_state_dict): with the
    model object it identifies the weights, so a memo never serves numbers of earlier weights."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


class ModelScores:
    """Teacher-forced scores by (model object, inputs, weights): an EvalSession state, so the seeds of
    one model's evaluation share one scoring pass."""

    def __init__(self) -> None:
        self._by_model: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()

    def get(self, model, key, make):
        memo = self._by_model.setdefault(model, {})
        if key not in memo:
            memo.clear()  # the same model with other weights or inputs: keep only the newest
            memo[key] = make()
        return memo[key]


def token_mean(nll: Sequence[float], tokens: Sequence[float]) -> float:
    """sum(nll) / sum(tokens) over per-example rows."""
    n = sum(tokens)
    if n == 0:
        raise ValueError("lm_loss: every response is empty after truncation")
    return sum(nll) / n


def lm_loss(model, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 32,
            vocab_size: int | None = None) -> float:
    """Mean cross-entropy (nats) per response token of `model` on (prompt_ids, response_ids) pairs."""
    return score_pairs(model, pairs, pad_id, batch_size, vocab_size)[0]


def _lm_loss_recompute(rows: list[dict]) -> dict[str, float]:
    rows = [r for r in rows if r.get("lm_loss.tokens") is not None]
    if not rows:
        return {}
    return {"lm_loss": token_mean([r["lm_loss.nll"] for r in rows], [r["lm_loss.tokens"] for r in rows])}


def _lm_loss_recompute_arrays(cols: dict) -> dict[str, float]:
    nll, tokens = cols.get("lm_loss.nll"), cols.get("lm_loss.tokens")
    if nll is None or tokens is None or np.isnan(tokens).all():
        return {}
    keep = ~np.isnan(tokens)
    return {"lm_loss": token_mean(nll[keep].tolist(), tokens[keep].tolist())}


@register_metric("lm_loss", version=1, higher_is_better=False, kind="model", per_example="recompute",
                 recompute=_lm_loss_recompute, recompute_arrays=_lm_loss_recompute_arrays,
                 description="teacher-forced cross-entropy per response token (EOS included) on the first reference")
def _lm_loss_metric(ctx: EvalContext):
    if ctx.model is None or ctx.tokenizer is None:
        return None
    where = [i for i, ex in enumerate(ctx.examples) if ex.references and ex.references[0]]
    if not where:
        return None
    max_prompt, max_total = eval_lengths(ctx)
    pairs = [encode_pair(ctx.tokenizer, ctx.examples[i].prompt, ctx.examples[i].references[0], max_total, max_prompt)
             for i in where]
    bs = int(getattr(ctx.eval_config, "batch_size", 32) or 32)
    vocab = vocab_size_of(ctx.tokenizer)

    def score():
        was_training = ctx.model.training
        ctx.model.eval()
        try:
            return score_pairs(ctx.model, pairs, ctx.tokenizer.pad_token_id, bs, vocab)
        finally:
            if was_training:
                ctx.model.train()

    # teacher-forced: the same for every evaluation seed, so scored once per model and weights
    key = (tuple(map(tuple, (p + r for p, r in pairs))), tuple(len(p) for p, _ in pairs), ctx.tokenizer.pad_token_id,
           bs, vocab, weights_version(ctx.model))
    value, nll, tokens = ctx.session.state(ModelScores).get(ctx.model, key, score)
    ctx.record("lm_loss.nll", nll, where)
    ctx.record("lm_loss.tokens", tokens, where)
    return value
