"""Metrics only a world with an exact checker can report: validity, per-family validity and mode
coverage on multi-answer prompts (precision vs recall: mode-seeking vs mode-covering)."""
from __future__ import annotations

from .base import EvalContext, register_metric


def _checks(ctx: EvalContext):
    if "checks" not in ctx.cache:
        ctx.cache["checks"] = [ctx.task.check(ex, p) for ex, p in zip(ctx.examples, ctx.predictions)]
    return ctx.cache["checks"]


@register_metric("validity", version=1, description="% of responses the task's checker accepts (precision)")
def validity(ctx: EvalContext):
    checks = _checks(ctx)
    if not checks or any(c is None for c in checks):
        return None
    by_family: dict[str, list[bool]] = {}
    for ex, c in zip(ctx.examples, checks):
        by_family.setdefault(ex.meta.get("family", "all"), []).append(bool(c["valid"]))
    ctx.artifacts["validity_by_family"] = {f: 100.0 * sum(v) / len(v) for f, v in sorted(by_family.items())}
    return 100.0 * sum(bool(c["valid"]) for c in checks) / len(checks)


def coverage_of(groups: list[list[str]], modes_per_prompt: list[list[str]]) -> float:
    """Mean over prompts of |distinct valid modes produced| / |modes|, x100."""
    fracs = []
    for samples, modes in zip(groups, modes_per_prompt):
        hit = {s.strip() for s in samples} & set(modes)
        fracs.append(len(hit) / len(modes))
    return 100.0 * sum(fracs) / max(len(fracs), 1)


@register_metric("mode_coverage", version=1, kind="model",
                 description="% of the valid answers of multi-answer prompts hit in k samples (recall)")
def mode_coverage(ctx: EvalContext):
    exs = [ex for ex in ctx.examples if ex.meta.get("modes")]
    if not exs or ctx.sample_fn is None:
        return None
    k = ctx.eval_config.coverage_samples if ctx.eval_config is not None else 8
    groups = ctx.sample_fn(exs, k, ctx.seed + 1)
    ctx.artifacts["mode_histogram"] = _histogram(groups, [ex.meta["modes"] for ex in exs])
    return coverage_of(groups, [ex.meta["modes"] for ex in exs])


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
