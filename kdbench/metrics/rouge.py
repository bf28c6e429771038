"""Rouge-L with MiniLLM's protocol: rouge_score, Porter stemmer, F-measure, max over refs, x100."""
from __future__ import annotations

from functools import lru_cache

from .base import EvalContext, mean_values, register_metric


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_single(prediction: str, references: list[str]) -> float:
    """Max Rouge-L F-measure (0..1) of one prediction over its references."""
    if not references:
        raise ValueError("rouge_l needs at least one reference per prediction")
    scorer = _scorer()
    return max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references)


def rouge_l_per_example(predictions: list[str], references: list[list[str]]) -> list[float]:
    """Rouge-L x100 of each prediction (max F-measure over its references)."""
    if len(predictions) != len(references):
        raise ValueError(f"rouge_l: {len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("rouge_l: no predictions")
    return [100.0 * rouge_l_single(p, r) for p, r in zip(predictions, references)]


def rouge_l(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus Rouge-L x100: mean over examples of the max F-measure over that example's refs."""
    return mean_values(rouge_l_per_example(predictions, references))


_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def normalize_answer(s: str) -> str:
    """SQuAD-style normalisation as MiniLLM uses: lowercase, drop punctuation, collapse spaces
    (articles are deliberately kept)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(s.split())


def exact_match_per_example(predictions: list[str], references: list[list[str]]) -> list[float]:
    """100.0 where the prediction matches one reference after normalisation, else 0.0."""
    return [100.0 if any(normalize_answer(p) == normalize_answer(r) for r in refs) else 0.0
            for p, refs in zip(predictions, references)]


def exact_match(predictions: list[str], references: list[list[str]]) -> float:
    # 100 * hits / n, bit for bit: a sum of 100.0s and 0.0s is exact
    return mean_values(exact_match_per_example(predictions, references)) or 0.0


@register_metric("rouge_l", version=1, description="Rouge-L F x100, max over references (MiniLLM protocol)",
                 per_example="mean")
def _rouge_l_metric(ctx: EvalContext):
    vals = rouge_l_per_example(ctx.predictions, [ex.references for ex in ctx.examples])
    ctx.record("rouge_l", vals)
    return mean_values(vals)


@register_metric("exact_match", version=1, description="exact match % after SQuAD-style normalisation",
                 per_example="mean")
def _exact_match_metric(ctx: EvalContext):
    vals = exact_match_per_example(ctx.predictions, [ex.references for ex in ctx.examples])
    ctx.record("exact_match", vals)
    return mean_values(vals) or 0.0
