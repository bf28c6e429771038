"""Metrics only a world with an exact checker can report: validity, per-family validity and mode
coverage on multi-answer prompts (precision vs recall: mode-seeking vs mode-covering)."""
from __future__ import annotations

from .base import EvalContext, mean_values, register_metric


@register_metric("validity", version=1, description="% of responses the task's checker accepts (precision)",
                 per_example="mean")
def validity(ctx: EvalContext):
    checks = ctx.checks()
    if not checks or any(c is None for c in checks):
        return None
    by_family: dict[str, list[bool]] = {}
    for ex, c in zip(ctx.examples, checks):
        by_family.setdefault(ex.meta.get("family", "all"), []).append(bool(c["valid"]))
    ctx.artifacts["validity_by_family"] = {f: 100.0 * sum(v) / len(v) for f, v in sorted(by_family.items())}
    vals = [100.0 if c["valid"] else 0.0 for c in checks]
    ctx.record("validity", vals)
    return mean_values(vals)  # = 100 * valid / n exactly (a sum of 100.0s is exact)


def coverage_per_prompt(groups: list[list[str]], modes_per_prompt: list[list[str]]) -> list[float]:
    """Per prompt: |distinct valid modes produced| / |modes|, x100."""
    out = []
    for samples, modes in zip(groups, modes_per_prompt):
        hit = {s.strip() for s in samples} & set(modes)
        out.append(100.0 * len(hit) / len(modes))
    return out


def coverage_of(groups: list[list[str]], modes_per_prompt: list[list[str]]) -> float:
    """Mean over prompts of |distinct valid modes produced| / |modes|, x100."""
    return mean_values(coverage_per_prompt(groups, modes_per_prompt)) or 0.0


@register_metric("mode_coverage", version=1, kind="model", per_example="mean",
                 description="% of the valid answers of multi-answer prompts hit in k samples (recall)")
def mode_coverage(ctx: EvalContext):
    """Per-example value: coverage of that prompt (null on prompts without several modes)."""
    where = [i for i, ex in enumerate(ctx.examples) if ex.meta.get("modes")]
    if not where or ctx.sample_fn is None:
        return None
    exs = [ctx.examples[i] for i in where]
    k = ctx.eval_config.coverage_samples if ctx.eval_config is not None else 8
    groups = ctx.sample_fn(exs, k, ctx.seed + 1)
    modes = [ex.meta["modes"] for ex in exs]
    ctx.artifacts["mode_histogram"] = _histogram(groups, modes)
    vals = coverage_per_prompt(groups, modes)
    ctx.record("mode_coverage", vals, where)
    return mean_values(vals)


def _histogram(groups, modes_per_prompt):
    """Share of samples per mode rank (0 = most likely) plus 'invalid' (for plots)."""
    counts: dict[str, int] = {}
    total = 0
    for samples, modes in zip(groups, modes_per_prompt):
        for s in samples:
            key = f"mode{modes.index(s.strip())}" if s.strip() in modes else "invalid"
            counts[key] = counts.get(key, 0) + 1
            total += 1
    return {k: v / max(total, 1) for k, v in sorted(counts.items())}
