"""Evaluate one model on one task for one seed: sample responses, compute every metric."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .config import EvalConfig
from .data import encode_pair
from .metrics.base import METRICS, EvalContext
from .sampling import SamplingConfig, decode_response, sample
from .schema import Example


def sampling_config(ev: EvalConfig, max_new_tokens: int | None = None) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=max_new_tokens or ev.max_new_tokens, temperature=ev.temperature,
                          top_p=ev.top_p, top_k=ev.top_k, no_repeat_ngram_size=ev.no_repeat_ngram_size)


@torch.no_grad()
def label_word_logprobs(model, tokenizer, examples: Sequence[Example], max_prompt: int) -> dict[str, Any] | None:
    """log p(label word | prompt) for every example with meta['label_words'] (zero-shot
    classification: SST-2, BoolQ, the toy yes/no family). Multi-token label words are scored by
    their summed token log-probs."""
    rows = [ex for ex in examples if ex.meta.get("label_words")]
    if not rows:
        return None
    device = next(model.parameters()).device
    logprobs, gold = [], []
    for ex in rows:
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
    return {"logprobs": logprobs, "gold": gold, "ids": [ex.id for ex in rows]}


def evaluate(model, tokenizer, task, examples: Sequence[Example], seed: int, ev: EvalConfig, metrics: Sequence[str],
             teacher=None, max_prompt_length: int = 256, model_label: str = "", teacher_fn=None,
             settings: dict | None = None, run_dir=None) -> tuple[dict[str, float], list[dict], dict]:
    """Returns (metric values, generation records, artifacts)."""
    model.eval()
    scfg = sampling_config(ev)
    prompts = [encode_pair(tokenizer, ex.prompt, None, 10**9, max_prompt_length)[0] for ex in examples]
    roll = sample(model, prompts, scfg, tokenizer.eos_token_id, tokenizer.pad_token_id, seed, batch_size=ev.batch_size)
    preds = roll.texts(tokenizer)

    def sample_fn(exs: Sequence[Example], n: int, s: int) -> list[list[str]]:
        ps = [encode_pair(tokenizer, ex.prompt, None, 10**9, max_prompt_length)[0] for ex in exs for _ in range(n)]
        r = sample(model, ps, scfg, tokenizer.eos_token_id, tokenizer.pad_token_id, s, batch_size=ev.batch_size * 4)
        texts = [decode_response(tokenizer, x) for x in r.response_ids]
        return [texts[i * n:(i + 1) * n] for i in range(len(exs))]

    ctx = EvalContext(task=task, examples=list(examples), predictions=preds, seed=seed, model=model,
                      tokenizer=tokenizer, teacher=teacher, model_label=model_label, eval_config=ev,
                      sample_fn=sample_fn, sampling=scfg, teacher_fn=teacher_fn, settings=dict(settings or {}))
    ctx.cache["max_prompt_length"] = max_prompt_length
    ctx.cache["run_dir"] = run_dir
    if "ece" in metrics:
        scores = label_word_logprobs(model, tokenizer, examples, max_prompt_length)
        if scores is not None:
            ctx.cache["label_scores"] = scores
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
    checks = ctx.cache.get("checks") or [task.check(ex, p) for ex, p in zip(examples, preds)]
    ratings = ctx.cache.get("judge_ratings") or [None] * len(preds)
    gens = []
    for ex, p, resp, chk, rating in zip(examples, preds, roll.response_ids, checks, ratings):
        rec = {"id": ex.id, "prompt": ex.prompt, "response": p, "references": ex.references,
               "n_tokens": len(resp)}
        if chk is not None:
            rec["check"] = chk
        if "family" in ex.meta:
            rec["family"] = ex.meta["family"]
        if rating is not None:
            rec["judge"] = rating
        gens.append(rec)
    ctx.artifacts["avg_response_tokens"] = sum(len(r) for r in roll.response_ids) / max(len(preds), 1)
    return values, gens, ctx.artifacts
