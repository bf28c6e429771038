"""Rouge-L with MiniLLM's protocol: rouge_score, Porter stemmer, F-measure, max over refs, x100."""
from __future__ import annotations

from functools import lru_cache

from .base import EvalContext, register_metric


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


def rouge_l(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus Rouge-L x100: mean over examples of the max F-measure over that example's refs."""
    if len(predictions) != len(references):
        raise ValueError(f"rouge_l: {len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("rouge_l: no predictions")
    return 100.0 * sum(rouge_l_single(p, r) for p, r in zip(predictions, references)) / len(predictions)


_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def normalize_answer(s: str) -> str:
    """SQuAD-style normalisation as MiniLLM uses: lowercase, drop punctuation, collapse spaces
    (articles are deliberately kept)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(s.split())


def exact_match(predictions: list[str], references: list[list[str]]) -> float:
    hits = [any(normalize_answer(p) == normalize_answer(r) for r in refs) for p, refs in zip(predictions, references)]
    return 100.0 * sum(hits) / max(len(hits), 1)


@register_metric("rouge_l", version=1, description="Rouge-L F x100, max over references (MiniLLM protocol)")
def _rouge_l_metric(ctx: EvalContext):
    return rouge_l(ctx.predictions, [ex.references for ex in ctx.examples])


@register_metric("exact_match", version=1, description="exact match % after SQuAD-style normalisation")
def _exact_match_metric(ctx: EvalContext):
    return exact_match(ctx.predictions, [ex.references for ex in ctx.examples])
