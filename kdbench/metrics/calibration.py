"""Calibration: expected calibration error (ECE) from label-word probabilities.

MiniLLM reports ECE on SST-2 and BoolQ, zero-shot, from the probabilities the model gives the
label words. This module scores the label words with the evaluated model
(`label_word_logprobs`), holds the pure maths, and registers the metric that turns the scores
into ECE and accuracy.

Binning convention: `n_bins` equal-width bins over [0, 1]; bin b holds b/n <= conf < (b+1)/n,
except that the last bin is closed (conf == 1.0 lands there) and conf == 0 lands in the first.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..data import encode_pair
from ..schema import Example
from .base import EvalContext, register_metric


def _validate(confidences, correct, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    conf = np.asarray(confidences, dtype=np.float64)
    corr = np.asarray(correct)
    if conf.ndim != 1 or corr.ndim != 1:
        raise ValueError(f"confidences and correct must be 1-D, got shapes {conf.shape} and {corr.shape}")
    if conf.shape[0] != corr.shape[0]:
        raise ValueError(f"confidences has {conf.shape[0]} values but correct has {corr.shape[0]}")
    if conf.shape[0] == 0:
        raise ValueError("ECE needs at least one prediction, got none")
    if not np.all(np.isfinite(conf)):
        raise ValueError("confidences contain NaN or inf")
    if conf.min() < 0.0 or conf.max() > 1.0:
        raise ValueError(f"confidences must lie in [0, 1], got min {conf.min():.6g} and max {conf.max():.6g}")
    if corr.dtype != np.bool_:
        # Accept 0/1 numbers (as produced by `pred == gold` in other libraries); anything else is a bug.
        if not np.all((corr == 0) | (corr == 1)):
            raise ValueError("correct must hold booleans or 0/1 values")
        corr = corr.astype(bool)
    return conf, corr


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    # floor(conf * n) keeps 0.3 in bin 3 (linspace edges would put it in bin 2 via float error);
    # the clamp closes the last bin so that conf == 1.0 is counted.
    return np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)


def reliability_bins(confidences, correct, n_bins: int = 10) -> list[dict[str, Any]]:
    """Per-bin counts, accuracy and mean confidence (the reliability diagram).

    Returns `n_bins` dicts {lo, hi, count, accuracy, confidence}; accuracy and confidence are None
    for empty bins (so a plot can skip them and JSON stays valid).
    """
    conf, corr = _validate(confidences, correct, n_bins)
    idx = _bin_index(conf, n_bins)
    out = []
    for b in range(n_bins):
        mask = idx == b
        count = int(mask.sum())
        out.append({
            "lo": b / n_bins,
            "hi": (b + 1) / n_bins,
            "count": count,
            "accuracy": float(corr[mask].mean()) if count else None,
            "confidence": float(conf[mask].mean()) if count else None,
        })
    return out


def ece(confidences, correct, n_bins: int = 10) -> float:
    """Expected calibration error in [0, 1]: sum_b (n_b / N) * |acc_b - conf_b|."""
    conf, corr = _validate(confidences, correct, n_bins)
    total = conf.shape[0]
    err = 0.0
    for row in reliability_bins(conf, corr, n_bins):
        if row["count"]:
            err += row["count"] / total * abs(row["accuracy"] - row["confidence"])
    return float(err)


def label_word_probs(logprobs_per_label) -> tuple[np.ndarray, np.ndarray]:
    """Normalise over the K label words: softmax of an [N, K] array of label-word log-probs.

    Returns (pred [N] int, conf [N] float): the argmax label and its normalised probability.
    Normalising over the label words (not the whole vocabulary) is what makes a zero-shot
    classifier out of an LM: mass on other tokens would otherwise deflate every confidence.
    """
    lp = np.asarray(logprobs_per_label, dtype=np.float64)
    if lp.ndim != 2:
        raise ValueError(f"logprobs_per_label must be 2-D [N, K], got shape {lp.shape}")
    if lp.shape[0] == 0:
        raise ValueError("logprobs_per_label has no rows")
    if lp.shape[1] < 2:
        raise ValueError(f"need at least two label words per example, got K={lp.shape[1]}")
    if np.isnan(lp).any() or (lp == np.inf).any():
        raise ValueError("logprobs_per_label contains NaN or +inf")
    row_max = lp.max(axis=1)
    if np.isneginf(row_max).any():
        bad = int(np.flatnonzero(np.isneginf(row_max))[0])
        raise ValueError(f"row {bad} of logprobs_per_label is all -inf (every label word has probability 0)")
    # Subtract the row max before exponentiating so that very negative log-probs do not underflow.
    shifted = lp - row_max[:, None]
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1).astype(np.int64)
    conf = probs[np.arange(lp.shape[0]), pred]
    return pred, np.clip(conf, 0.0, 1.0)


def check_label_scores(logprobs, gold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred, conf, correct) from [N, K] label-word log-probs and N gold label indices; ValueError
    on a shape or label mismatch."""
    pred, conf = label_word_probs(logprobs)
    gold = np.asarray(gold)
    if gold.ndim != 1 or gold.shape[0] != pred.shape[0]:
        raise ValueError(f"label scores: {pred.shape[0]} rows of logprobs but gold has shape {gold.shape}")
    k = np.asarray(logprobs).shape[1]
    if not np.issubdtype(gold.dtype, np.integer) or gold.min() < 0 or gold.max() >= k:
        raise ValueError(f"label scores: gold labels must be integers in [0, {k}), got {gold.tolist()[:10]}...")
    return pred, conf, pred == gold


def ece_values(confidences, correct) -> dict[str, float]:
    """The metric's values: ECE (10 bins) and classification accuracy x100."""
    conf, corr = _validate(confidences, correct, 10)
    return {"ece": ece(conf, corr), "cls_acc": 100.0 * float(corr.mean())}


@torch.no_grad()
def label_word_logprobs(model, tokenizer, examples: Sequence[Example], max_prompt: int) -> dict[str, Any] | None:
    """log p(label word | prompt) for every example with meta['label_words'] (zero-shot
    classification: SST-2, BoolQ, the toy yes/no family). Multi-token label words are scored by
    their summed token log-probs. Returns {logprobs, gold, ids, index} (index: positions in
    `examples`), or None when no example has label words."""
    where = [i for i, ex in enumerate(examples) if ex.meta.get("label_words")]
    if not where:
        return None
    device = next(model.parameters()).device
    logprobs, gold = [], []
    for i in where:
        ex = examples[i]
        p_ids, _ = encode_pair(tokenizer, ex.prompt, None, 10**9, max_prompt)
        scores = []
        for word in ex.meta["label_words"]:
            _, r = encode_pair(tokenizer, ex.prompt, word, 10**9, max_prompt)
            r = r[:-1]  # drop EOS: the label word is scored as a continuation
            ids = torch.tensor([p_ids + r], device=device)
            lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            scores.append(float(sum(lp[len(p_ids) - 1 + j, tok] for j, tok in enumerate(r))))
        logprobs.append(scores)
        gold.append(int(ex.meta["label"]))
    return {"logprobs": logprobs, "gold": gold, "ids": [examples[i].id for i in where], "index": where}


def _ece_recompute(rows: list[dict]) -> dict[str, float]:
    rows = [r for r in rows if r.get("ece.confidence") is not None]
    if not rows:
        return {}
    return ece_values([r["ece.confidence"] for r in rows], [r["ece.correct"] for r in rows])


def _ece_recompute_arrays(cols: dict) -> dict[str, float]:
    conf, corr = cols.get("ece.confidence"), cols.get("ece.correct")
    if conf is None or corr is None:
        return {}
    keep = ~np.isnan(conf)
    return ece_values(conf[keep], corr[keep]) if keep.any() else {}


@register_metric("ece", version=1, higher_is_better=False, kind="model",
                 description="expected calibration error from label-word probabilities (10 bins), plus accuracy",
                 sub_directions={"ece": False, "cls_acc": True}, per_example="recompute", recompute=_ece_recompute,
                 recompute_arrays=_ece_recompute_arrays)
def _ece_metric(ctx: EvalContext):
    """Per-example fields on label-word examples: ece.confidence (normalised probability of the
    predicted label), ece.correct (1/0), ece.pred (predicted label index). ECE bins over examples,
    so it is recomputed from them rather than averaged."""
    if ctx.model is None or ctx.tokenizer is None:
        return None
    was_training = ctx.model.training
    ctx.model.eval()
    try:
        scores = label_word_logprobs(ctx.model, ctx.tokenizer, ctx.examples, ctx.max_prompt_length)
    finally:
        if was_training:
            ctx.model.train()
    if scores is None:
        return None  # the task has no label words
    pred, conf, correct = check_label_scores(scores["logprobs"], scores["gold"])
    ctx.record("ece.confidence", conf.tolist(), scores["index"])
    ctx.record("ece.correct", correct.astype(np.float64).tolist(), scores["index"])
    ctx.record("ece.pred", pred.astype(np.float64).tolist(), scores["index"])
    ctx.artifacts["reliability"] = reliability_bins(conf, correct)
    return ece_values(conf, correct)
