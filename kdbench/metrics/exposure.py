"""Exposure bias as ExAccErr (Arora et al. 2022, as MiniLLM reports it), the teacher as oracle.

For each prompt, k continuations are sampled from the evaluated model and k from the teacher with
the evaluation's decoding. On every continuation the per-position error is the forward KL
KL(p_teacher || q_model) of the next-token distributions that produced generated token t, for
t = 1..n (the one that produced EOS included). Errors are accumulated over positions up to l (a
continuation that ended before l adds nothing more), averaged over the k samples of a prompt, then
over prompts:
    R(l)   from model-generated text,   eps(l) from teacher-generated text,
    ExAccErr(l) = (R(l) - eps(l)) / eps(l) * 100.
Lower is better: the extra error a model accumulates on its own text beyond what it makes on the
oracle's text.

Differences from MiniLLM's `evaluate_exposure_bias.py`, on purpose:
- alignment: upstream slices `logits[:, len(prompt):]`, so position t is scored with the
  distribution that predicts token t + 1 (the first generated token is never scored, and one
  position past the end is). Here the logits at position len(prompt) - 1 + t predict token t.
  A check that follows: position 1 is predicted from the prompt alone for both texts, so
  R(1) = eps(1) and ExAccErr(1) = 0 exactly.
- standard error: upstream writes (|std_R / R| + |std_eps / std_eps|) * ExAccErr, i.e. a relative
  std plus a constant 1, scaled. Here it is the standard error over prompts of the ratio estimator
  R/eps (delta method, paired by prompt): se = 100 / eps * sqrt(sum_i (R_i - r eps_i)^2 / (n (n-1)))
  with r = R / eps. Prompts are the independent unit; the pairing keeps the (positive) covariance
  of R_i and eps_i from inflating it.
- samples that ended early: upstream divides by the number of samples still running at each
  position (with k > 1); here each sample's accumulated error stays flat after its end, so R(l)
  is an average of per-sample sums (the same as upstream with its default k = 1).

The teacher row: the teacher is the oracle, its error on any text is 0 and ExAccErr is 0/0; we
report 0 (no excess error by definition) with `artifacts['exposure_curve']['self'] = True`.
Settings (eval config fields when present, else `settings['exposure']`): `exposure_prompts`
(first N test examples, default 32) and `exposure_samples` (k, default 4).
"""
from __future__ import annotations

import logging
import math
import weakref
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..data import collate, encode_pair
from ..divergences import token_forward_kl
from ..hidden import eval_chunk_rows, forward_logits, model_vocab
from ..models import vocab_size_of
from ..sampling import SamplingConfig, sample
from .base import EvalContext, mean_values, register_metric

log = logging.getLogger("kdbench")

REPORT_LENGTHS = (8, 16)  # leaderboard sub-values besides the value at the maximum length
DEFAULT_PROMPTS = 32
DEFAULT_SAMPLES = 4


# ------------------------------------------------------------------------------------------------
# pure maths


def accumulated(errors: Sequence[Sequence[float]], max_len: int) -> np.ndarray:
    """[n_seqs, max_len]: row i at column l-1 is the sum of sequence i's first l errors (positions
    past a sequence's end add 0; positions past max_len are ignored)."""
    out = np.zeros((len(errors), max_len), dtype=np.float64)
    for i, e in enumerate(errors):
        e = np.asarray(e, dtype=np.float64)[:max_len]
        if e.ndim != 1:
            raise ValueError(f"per-position errors of sequence {i} must be 1-D, got shape {e.shape}")
        if not np.all(np.isfinite(e)):
            raise ValueError(f"per-position errors of sequence {i} contain NaN or inf")
        out[i, : len(e)] = e
    return np.cumsum(out, axis=1)


def _per_prompt(groups: Sequence[Sequence[Sequence[float]]], max_len: int, what: str) -> np.ndarray:
    rows = []
    for i, g in enumerate(groups):
        if len(g) == 0:
            raise ValueError(f"{what}: prompt {i} has no samples")
        rows.append(accumulated(g, max_len).mean(axis=0))
    return np.stack(rows)


def _none_if_nan(xs: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(float(x)) else float(x) for x in xs]


def exposure_curve(model_errors: Sequence[Sequence[Sequence[float]]],
                   teacher_errors: Sequence[Sequence[Sequence[float]]],
                   max_len: int | None = None) -> dict[str, Any]:
    """ExAccErr curve from per-position errors.

    `model_errors[i][j]` is the 1-D array of per-position errors on the j-th continuation the
    evaluated model sampled for prompt i; `teacher_errors[i][j]` the same on the teacher's
    continuations. Both must cover the same prompts in the same order (the standard error pairs
    them). Returns lists over l = 1..max_len: lengths, R, eps, exaccerr, stderr (None where
    undefined: eps = 0, or fewer than two prompts), plus n_prompts.
    """
    if len(model_errors) != len(teacher_errors):
        raise ValueError(f"exposure_curve: {len(model_errors)} prompts of model samples but "
                         f"{len(teacher_errors)} of teacher samples; they must be the same prompts")
    if not model_errors:
        raise ValueError("exposure_curve: no prompts")
    if max_len is None:
        max_len = max(len(e) for g in list(model_errors) + list(teacher_errors) for e in g)
    if max_len < 1:
        raise ValueError(f"exposure_curve: max_len must be >= 1, got {max_len}")
    R_i = _per_prompt(model_errors, max_len, "model samples")
    e_i = _per_prompt(teacher_errors, max_len, "teacher samples")
    n = R_i.shape[0]
    R, eps = R_i.mean(axis=0), e_i.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(eps > 0, R / np.where(eps > 0, eps, 1.0), np.nan)
        if n >= 2:
            resid = R_i - ratio[None, :] * e_i
            se_ratio = np.sqrt((resid ** 2).sum(axis=0) / (n * (n - 1))) / eps
        else:
            se_ratio = np.full(max_len, np.nan)
    return {
        "lengths": list(range(1, max_len + 1)),
        "R": _none_if_nan(R),
        "eps": _none_if_nan(eps),
        "exaccerr": _none_if_nan(100.0 * (ratio - 1.0)),
        "stderr": _none_if_nan(100.0 * se_ratio),
        "n_prompts": n,
    }


# ------------------------------------------------------------------------------------------------
# per-position errors from two models


@torch.no_grad()
def sequence_errors(model, teacher, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                    pad_id: int, batch_size: int = 32, vocab_size: int | None = None) -> list[np.ndarray]:
    """Per generated token t of each (prompt, response): KL(p_teacher || q_model) of the two
    next-token distributions at the position that predicts token t (the last prompt position for
    t = 0). Raw logits (temperature 1, no filtering), fp32, over the first `vocab_size` ids (padded
    embedding rows are not tokens; training cuts them off the same way)."""
    if len(prompts) != len(responses):
        raise ValueError(f"sequence_errors: {len(prompts)} prompts but {len(responses)} responses")
    dev_m = next(model.parameters()).device
    dev_t = next(teacher.parameters()).device
    out: list[np.ndarray] = []
    for s in range(0, len(prompts), batch_size):
        pairs = [(list(p), list(r)) for p, r in zip(prompts[s: s + batch_size], responses[s: s + batch_size])]
        if any(not p for p, _ in pairs):
            raise ValueError("sequence_errors: empty prompt (the first generated token has no predicting position)")
        b = collate(pairs, pad_id)
        # collate's labels mark exactly the positions len(p)-1+t that predict response token t
        mask = b.labels != -100
        q = forward_logits(model, b.input_ids.to(dev_m), b.attention_mask.to(dev_m), vocab_size,
                           trim=True).rows(mask.to(dev_m))
        p = forward_logits(teacher, b.input_ids.to(dev_t), b.attention_mask.to(dev_t), vocab_size,
                           trim=True).rows(mask.to(dev_t))
        # the scored rows only, a chunk at a time: never two [B, L, V] logits and their log-softmaxes
        n = int(mask.sum())
        v = min(model_vocab(q), model_vocab(p), vocab_size or model_vocab(q))
        step = eval_chunk_rows(v)
        kl = torch.cat([token_forward_kl(q.chunk(i, min(i + step, n))[..., :v].float(),
                                         p.chunk(i, min(i + step, n)).to(dev_m)[..., :v].float())
                        for i in range(0, n, step)]).cpu() if n else torch.zeros(0)
        lengths = mask.sum(dim=1).tolist()
        for (_, r), row in zip(pairs, torch.split(kl, lengths)):
            assert len(row) == len(r), "label mask and response length disagree"
            out.append(row.double().numpy())
    return out


# ------------------------------------------------------------------------------------------------
# the metric

class TeacherSamples:
    """Teacher continuations depend only on (teacher, prompts, decoding, seed), not on the evaluated
    model: sampled once per evaluation seed and reused for every model of the run (EvalSession state)."""

    def __init__(self) -> None:
        self._by_teacher: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()

    def get(self, teacher, key, make):
        per_teacher = self._by_teacher.setdefault(teacher, {})
        if key not in per_teacher:
            if len(per_teacher) >= 16:  # a few seeds x tasks; the runner interleaves seeds
                per_teacher.pop(next(iter(per_teacher)))
            per_teacher[key] = make()
        return per_teacher[key]


def _setting(ctx: EvalContext, name: str, default: int) -> int:
    v = getattr(ctx.eval_config, f"exposure_{name}", None)
    if v is None:
        v = (ctx.settings.get("exposure") or {}).get(name)
    v = default if v is None else v
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"exposure bias setting '{name}' must be a positive integer, got {v!r}")
    return v


def _is_teacher(ctx: EvalContext) -> bool:
    # The runner evaluates the teacher under the label "teacher" (a separate copy of its weights).
    return ctx.model_label == "teacher" or (ctx.teacher is not None and ctx.model is ctx.teacher)


def _value_lengths(max_len: int) -> dict[str, int]:
    """Reported value name -> generation length it is read at."""
    out = {f"exposure_bias@{L}": L for L in REPORT_LENGTHS if L < max_len}
    out["exposure_bias"] = max_len
    return out


def _field(value: str, what: str) -> str:
    # exposure_bias -> exposure_bias.R ; exposure_bias@8 -> exposure_bias.R@8
    base, _, at = value.partition("@")
    return f"{base}.{what}" + (f"@{at}" if at else "")


def exaccerr(R_i: Sequence[Optional[float]], eps_i: Sequence[Optional[float]]) -> Optional[float]:
    """100 * (mean R_i / mean eps_i - 1) over prompts: the one reduction behind the cell values and
    their recompute (None where eps = 0)."""
    R, eps = mean_values(R_i), mean_values(eps_i)
    if R is None or eps is None or not eps > 0:
        return None
    return 100.0 * (R / eps - 1.0)


def _exposure_recompute(rows: list[dict]) -> dict[str, float]:
    present = [k for k in dict.fromkeys(k for r in rows for k in r) if any(r.get(k) is not None for r in rows)]
    out = {}
    for key in present:
        if key.startswith("exposure_bias.oracle"):  # the teacher's own row: 0 by definition
            out[key.replace(".oracle", "", 1)] = 0.0
        elif key.startswith("exposure_bias.R"):
            value = key.replace(".R", "", 1)
            out[value] = exaccerr([r.get(key) for r in rows], [r.get(_field(value, "eps")) for r in rows])
    return out


def _exposure_recompute_arrays(cols: dict) -> dict[str, float]:
    """`_exposure_recompute` on columns (NaN = absent): the same reduction, vectorised."""
    def mean(x):
        x = x[~np.isnan(x)]
        return float(sum(x.tolist()) / len(x)) if len(x) else None  # summed as mean_values sums

    out = {}
    for key, v in cols.items():
        if np.isnan(v).all():
            continue
        if key.startswith("exposure_bias.oracle"):
            out[key.replace(".oracle", "", 1)] = 0.0
        elif key.startswith("exposure_bias.R"):
            value = key.replace(".R", "", 1)
            eps = cols.get(_field(value, "eps"))
            R, e = mean(v), (None if eps is None else mean(eps))
            out[value] = None if R is None or e is None or not e > 0 else 100.0 * (R / e - 1.0)
    return out


@register_metric("exposure_bias", version=1, higher_is_better=False, kind="model", per_example="recompute",
                 recompute=_exposure_recompute, recompute_arrays=_exposure_recompute_arrays,
                 cache_key=lambda settings: settings.get("exposure") or None,
                 description="ExAccErr % at the max generation length (teacher as oracle, lower is better)",
                 sub_directions={"exposure_bias": False, **{f"exposure_bias@{L}": False for L in REPORT_LENGTHS}})
def _exposure_metric(ctx: EvalContext):
    """Per-example fields on the first `exposure_prompts` examples: exposure_bias.R / .eps (and
    .R@8, .eps@8, ...): that prompt's accumulated error on model / teacher text, averaged over its
    k samples. ExAccErr is a ratio of means over prompts, so it is recomputed, not averaged."""
    if ctx.model is None or ctx.tokenizer is None:
        return None
    scfg: SamplingConfig = ctx.sampling or SamplingConfig(
        max_new_tokens=getattr(ctx.eval_config, "max_new_tokens", 256))
    max_len = scfg.max_new_tokens
    n_prompts = _setting(ctx, "prompts", DEFAULT_PROMPTS)
    k = _setting(ctx, "samples", DEFAULT_SAMPLES)
    lengths = _value_lengths(max_len)
    if _is_teacher(ctx):
        zeros = [0.0] * max_len
        ctx.artifacts["exposure_curve"] = {"lengths": list(range(1, max_len + 1)), "exaccerr": zeros,
                                           "stderr": zeros, "self": True, "k": k}
        # the oracle's own row: 0 by definition, marked per prompt so that recompute gives 0 too
        where = list(range(min(n_prompts, len(ctx.examples))))
        for value in lengths:
            ctx.record(_field(value, "oracle"), [1.0] * len(where), where)
        return {v: 0.0 for v in lengths}
    try:
        teacher = ctx.get_teacher()
    except Exception as e:  # noqa: BLE001 - one missing metric must not fail the cell
        log.warning("exposure_bias: the teacher could not be loaded (%s: %s); skipped", type(e).__name__, e)
        return None
    if teacher is None:
        return None
    tok = ctx.tokenizer
    exs = list(ctx.examples[:n_prompts])
    if not exs:
        return None
    prompts = [encode_pair(tok, ex.prompt, None, 10**9, int(ctx.max_prompt_length or 256))[0] for ex in exs]
    rep = [p for p in prompts for _ in range(k)]
    bs = int(getattr(ctx.eval_config, "batch_size", 32) or 32)
    seed = ctx.seed + 2  # mode_coverage samples with seed + 1; keep the streams apart
    was_training = ctx.model.training
    ctx.model.eval()
    try:
        model_resp = sample(ctx.model, rep, scfg, tok.eos_token_id, tok.pad_token_id, seed,
                            batch_size=bs * 4).response_ids
        key = (tuple(map(tuple, rep)), tuple(sorted(vars(scfg).items())), seed, tok.eos_token_id, tok.pad_token_id)
        teacher_resp = ctx.session.state(TeacherSamples).get(
            teacher, key, lambda: sample(teacher, rep, scfg, tok.eos_token_id, tok.pad_token_id, seed,
                                         batch_size=bs * 4).response_ids)
        vocab = vocab_size_of(tok)
        m_err = sequence_errors(ctx.model, teacher, rep, model_resp, tok.pad_token_id, bs * 4, vocab)
        t_err = sequence_errors(ctx.model, teacher, rep, teacher_resp, tok.pad_token_id, bs * 4, vocab)
    finally:
        if was_training:
            ctx.model.train()
    group = lambda xs: [xs[i * k:(i + 1) * k] for i in range(len(exs))]  # noqa: E731
    curve = exposure_curve(group(m_err), group(t_err), max_len)
    curve["k"] = k
    curve["self"] = False
    ctx.artifacts["exposure_curve"] = curve
    R_i = _per_prompt(group(m_err), max_len, "model samples")
    e_i = _per_prompt(group(t_err), max_len, "teacher samples")
    where = list(range(len(exs)))
    values = {}
    for value, L in lengths.items():
        R_col, e_col = R_i[:, L - 1].tolist(), e_i[:, L - 1].tolist()
        ctx.record(_field(value, "R"), R_col, where)
        ctx.record(_field(value, "eps"), e_col, where)
        values[value] = exaccerr(R_col, e_col)
    return values
