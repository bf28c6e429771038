"""Calibration: expected calibration error (ECE) from label-word probabilities.

MiniLLM reports ECE on SST-2 and BoolQ, zero-shot, from the probabilities the model gives the
label words. The model scoring (getting one log-prob per label word per example) is done by the
engine, which leaves it in `ctx.cache["label_scores"]`; this module holds the pure maths and a
metric that turns those scores into ECE and accuracy.

Binning convention: `n_bins` equal-width bins over [0, 1]; bin b holds b/n <= conf < (b+1)/n,
except that the last bin is closed (conf == 1.0 lands there) and conf == 0 lands in the first.
"""
from __future__ import annotations

from typing import Any

import numpy as np

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


@register_metric("ece", version=1, higher_is_better=False, kind="model",
                 description="expected calibration error from label-word probabilities (10 bins), plus accuracy",
                 sub_directions={"ece": False, "cls_acc": True})
def _ece_metric(ctx: EvalContext):
    scores = ctx.cache.get("label_scores")
    if scores is None:
        return None  # the task has no label words, or the engine did not score them
    if not isinstance(scores, dict) or "logprobs" not in scores or "gold" not in scores:
        raise ValueError("ctx.cache['label_scores'] must be a dict with keys 'logprobs' and 'gold'")
    pred, conf = label_word_probs(scores["logprobs"])
    gold = np.asarray(scores["gold"])
    if gold.ndim != 1 or gold.shape[0] != pred.shape[0]:
        raise ValueError(f"label_scores: {pred.shape[0]} rows of logprobs but gold has shape {gold.shape}")
    k = np.asarray(scores["logprobs"]).shape[1]
    if not np.issubdtype(gold.dtype, np.integer) or gold.min() < 0 or gold.max() >= k:
        raise ValueError(f"label_scores: gold labels must be integers in [0, {k}), got {gold.tolist()[:10]}...")
    correct = pred == gold
    ctx.artifacts["reliability"] = reliability_bins(conf, correct)
    return {"ece": ece(conf, correct), "cls_acc": 100.0 * float(correct.mean())}
