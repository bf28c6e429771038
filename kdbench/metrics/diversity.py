"""Diversity: Dist-n (distinct n-gram ratio per response) and distinct responses per prompt.

MiniLLM reports Dist-4 to show that reverse-KL training does not collapse diversity. Tokens are
whitespace-split after lowercasing, so the number does not depend on any model's tokenizer.
"""
from __future__ import annotations

from .base import EvalContext, mean_values, register_metric


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    toks = text.lower().split()
    return [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]


def dist_n_per_response(texts: list[str], n: int = 4) -> list[float]:
    """Distinct n-grams / total n-grams of each response, x100.

    A response shorter than n tokens has no n-grams and counts as fully distinct (100): it repeats
    nothing, and dropping it would make the mean depend on how many short answers there are.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"dist_n: n must be a positive integer, got {n!r}")
    if isinstance(texts, str):
        raise ValueError("dist_n: expected a list of responses, got a single string")
    texts = list(texts)
    if not texts:
        raise ValueError("dist_n: no responses")
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"dist_n: response {i} is {type(t).__name__}, not str")
        grams = _ngrams(t, n)
        out.append(100.0 * len(set(grams)) / len(grams) if grams else 100.0)
    return out


def dist_n(texts: list[str], n: int = 4) -> float:
    """Mean over responses of distinct n-grams / total n-grams, x100 (see dist_n_per_response)."""
    return mean_values(dist_n_per_response(texts, n))


def distinct_responses(groups: list[list[str]]) -> float:
    """For k samples per prompt: distinct responses / k, averaged over prompts, x100.

    Responses are compared as exact strings (a whitespace or case difference is a different
    response), since this measures whether sampling returns the same output again.
    """
    groups = list(groups)
    if not groups:
        raise ValueError("distinct_responses: no prompts")
    total = 0.0
    for i, g in enumerate(groups):
        if isinstance(g, str):
            raise ValueError(f"distinct_responses: group {i} is a single string, expected a list of samples")
        g = list(g)
        if not g:
            raise ValueError(f"distinct_responses: group {i} has no samples")
        total += len(set(g)) / len(g)
    return 100.0 * total / len(groups)


@register_metric("dist4", version=1, higher_is_better=True, per_example="mean",
                 description="Dist-4: distinct 4-grams / total per response (lowercased whitespace tokens), x100")
def _dist4_metric(ctx: EvalContext):
    """Per-example value: Dist-4 of that response (the metric is a mean over responses)."""
    vals = dist_n_per_response(ctx.predictions, 4)
    ctx.record("dist4", vals)
    return mean_values(vals)
