"""Evaluate one model on one task for one seed.

Data flows one way: sample one response per example -> build an `EvalContext` -> every metric
computes what it needs from it and hands back its values, its per-example values (`ctx.record`)
and fields for the generation records (`ctx.annotate`) -> `EvalResult`. Nothing here knows a
metric by name. Run-scoped state (judge clients and budget, teacher samples) lives in an
`EvalSession` the runner creates once per benchmark run.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence


from .config import EvalConfig
from .data import encode_pair
from .models import vocab_size_of
from .metrics.base import METRICS, EvalContext, EvalSession, default_session
from .row_sampling import sample_rows
from .sampling import Rollout, SamplingConfig, decode_response, sample
from .schema import Example

__all__ = ["EvalResult", "EvalSession", "eval_cache_spec", "evaluate", "generate", "sampling_config",
           "task_eval_config"]


def task_eval_config(ev: EvalConfig, task) -> EvalConfig:
    """`ev` with the settings left to the task resolved (no_repeat_ngram_size null -> the task's)."""
    if ev.no_repeat_ngram_size is not None:
        return ev
    return dataclasses.replace(ev, no_repeat_ngram_size=int(getattr(task, "no_repeat_ngram_size", 0)))


def sampling_config(ev: EvalConfig, max_new_tokens: int | None = None) -> SamplingConfig:
    """The sampler's settings; an unresolved no_repeat_ngram_size (null, see task_eval_config) is 0."""
    return SamplingConfig(max_new_tokens=max_new_tokens or ev.max_new_tokens, temperature=ev.temperature,
                          top_p=ev.top_p, top_k=ev.top_k, no_repeat_ngram_size=ev.no_repeat_ngram_size or 0)


@dataclass
class EvalResult:
    values: dict[str, float]  # value name -> number (metrics that did not apply are absent)
    generations: list[dict]  # one record per example: generations.jsonl
    per_example: list[dict]  # one row per example: per_example.jsonl ({"id", <value name>: float | None})
    artifacts: dict[str, Any]  # per-cell data metrics left (curves, histograms, judge bookkeeping)


def eval_cache_spec(metrics: Sequence[str], settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the eval cell's cache key needs from its metrics: {"metrics": {name: version}} plus,
    under a metric's name, whatever else changes its numbers (e.g. "judge": backend, model, ...)."""
    settings = settings or {}
    spec: dict[str, Any] = {"metrics": {m: METRICS.get(m, "eval.metrics").version for m in metrics}}
    for m in metrics:
        extra = METRICS.get(m).cache_key(settings)
        if extra is not None:
            spec[m] = extra
    return spec


def _eval_sampling(ev: EvalConfig, tokenizer) -> SamplingConfig:
    scfg = sampling_config(ev)
    scfg.vocab_size = vocab_size_of(tokenizer)  # a padded embedding's extra rows are not tokens
    return scfg


def generate(model, tokenizer, examples: Sequence[Example], seed: int, ev: EvalConfig,
             max_prompt_length: int = 256) -> Rollout:
    """One sampled response per example, example i from its own generator seeded from (seed, i);
    under several ranks each samples its share and every rank gets all (kdbench/row_sampling.py)."""
    model.eval()
    prompts = [encode_pair(tokenizer, ex.prompt, None, 10**9, max_prompt_length)[0] for ex in examples]
    return sample_rows(model, prompts, _eval_sampling(ev, tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id,
                       seed, batch_size=ev.batch_size)[0]


def evaluate(model, tokenizer, task, examples: Sequence[Example], seed: int, ev: EvalConfig, metrics: Sequence[str],
             teacher=None, max_prompt_length: int = 256, model_label: str = "", teacher_fn=None,
             settings: dict | None = None, run_dir=None, session: EvalSession | None = None,
             rollout: Rollout | None = None) -> EvalResult:
    """Sample (`generate`, unless its `rollout` is given), then compute `metrics` in order. `session`
    holds state shared by the cells of one benchmark run (None: a process-wide default session);
    `run_dir` defaults to the session's."""
    session = session if session is not None else default_session()
    run_dir = run_dir if run_dir is not None else session.run_dir
    roll = rollout if rollout is not None else generate(model, tokenizer, examples, seed, ev, max_prompt_length)
    model.eval()
    scfg = _eval_sampling(ev, tokenizer)
    preds = roll.texts(tokenizer)

    def sample_fn(exs: Sequence[Example], n: int, s: int) -> list[list[str]]:
        ps = [encode_pair(tokenizer, ex.prompt, None, 10**9, max_prompt_length)[0] for ex in exs for _ in range(n)]
        r = sample(model, ps, scfg, tokenizer.eos_token_id, tokenizer.pad_token_id, s, batch_size=ev.batch_size * 4)
        texts = [decode_response(tokenizer, x) for x in r.response_ids]
        return [texts[i * n:(i + 1) * n] for i in range(len(exs))]

    ctx = EvalContext(task=task, examples=list(examples), predictions=preds, seed=seed, model=model,
                      tokenizer=tokenizer, teacher=teacher, model_label=model_label, eval_config=ev,
                      sample_fn=sample_fn, sampling=scfg, teacher_fn=teacher_fn, settings=dict(settings or {}),
                      max_prompt_length=max_prompt_length, run_dir=Path(run_dir) if run_dir else None,
                      session=session)
    values: dict[str, float] = {}
    for name in metrics:
        metric = METRICS.get(name, "eval.metrics")
        out = metric.fn(ctx)
        if out is None:
            continue
        if isinstance(out, dict):
            for k, v in out.items():
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    values[k] = float(v)
        else:
            values[name] = float(out)
    ctx.artifacts["avg_response_tokens"] = sum(len(r) for r in roll.response_ids) / max(len(preds), 1)
    return EvalResult(values=values, generations=_records(ctx, roll.response_ids),
                      per_example=ctx.per_example_rows(), artifacts=ctx.artifacts)


def _records(ctx: EvalContext, response_ids: Sequence[Sequence[int]]) -> list[dict]:
    checks = ctx.checks()  # the task's verdict on each generation, whichever metrics ran
    notes = ctx.annotations()
    gens = []
    for i, (ex, p, resp) in enumerate(zip(ctx.examples, ctx.predictions, response_ids)):
        rec = {"id": ex.id, "prompt": ex.prompt, "response": p, "references": ex.references, "n_tokens": len(resp)}
        if checks[i] is not None:
            rec["check"] = checks[i]
        if "family" in ex.meta:
            rec["family"] = ex.meta["family"]
        for name, vals in notes.items():
            if vals[i] is not None:
                rec[name] = vals[i]
        gens.append(rec)
    return gens
