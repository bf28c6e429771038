"""Teacher-forced metrics (LM loss, ExAccErr's per-position errors) score only the response rows,
a chunk of rows at a time, from the models' final hidden states: at a real vocabulary the whole
batch's [B, L, V] logits of two models and their log-softmaxes were most of an evaluation's peak
memory (smol: 32 sequences x 256 positions x 49k ids, ~1.6 GB a tensor).

Pinned here: the values equal the dense computation (every position's logits, then the loss) to
float rounding, padded embedding rows stay cut off, and no lm_head call ever sees more rows than a
chunk, so memory does not grow with the batch times the vocabulary.
"""
from __future__ import annotations

import random

import pytest
import torch

from kdbench import hidden
from kdbench.chunked import LazyLogits
from kdbench.data import IGNORE, collate
from kdbench.divergences import token_forward_kl
from kdbench.metrics import exposure, lm_loss
from fixtures import build_random_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    from kdbench import models as M

    tok = M.build_word_tokenizer([f"w{i}" for i in range(40)])
    v = len(tok)
    # 7 padded embedding rows beyond the tokenizer: their logits must never enter a metric
    student = build_random_model("gpt2", tok, hidden=16, layers=1, heads=2, n_positions=64, vocab_rows=v + 7,
                                 init_std=0.3, seed=1).eval()
    teacher = build_random_model("gpt2", tok, hidden=16, layers=2, heads=2, n_positions=64, vocab_rows=v + 7,
                                 init_std=0.3, seed=2).eval()
    rng = random.Random(0)
    pairs = [([rng.randrange(3, v) for _ in range(rng.randint(1, 9))], [rng.randrange(3, v) for _ in range(rng.randint(1, 12))])
             for _ in range(11)]
    return tok, student, teacher, pairs, v


def _dense_nll(model, pairs, pad, v):
    b = collate(pairs, pad)
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[..., :v].double()
    tok = torch.nn.functional.cross_entropy(logits.transpose(1, 2), b.labels, ignore_index=IGNORE, reduction="none")
    return tok.sum(dim=1).tolist(), (b.labels != IGNORE).sum(dim=1).tolist()


def _dense_kl(model, teacher, pairs, pad, v):
    b = collate(pairs, pad)
    with torch.no_grad():
        q = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[..., :v].double()
        p = teacher(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[..., :v].double()
    kl = token_forward_kl(q, p)
    return [kl[i][b.labels[i] != IGNORE].tolist() for i in range(len(pairs))]


def _count_head_rows(monkeypatch, chunk):
    """Make the evaluation chunk `chunk` rows and record the rows of every lm_head call."""
    seen = []
    real = LazyLogits.head

    def head(self, h, weight=None, bias=None):
        seen.append(h.shape[0])
        return real(self, h, weight, bias)

    monkeypatch.setattr(LazyLogits, "head", head)
    for mod in (hidden, lm_loss, exposure):
        if hasattr(mod, "eval_chunk_rows"):
            monkeypatch.setattr(mod, "eval_chunk_rows", lambda v: chunk)
    return seen


@pytest.mark.parametrize("chunk", [3, 1000])
def test_lm_loss_equals_dense_and_stays_in_chunks(models, monkeypatch, chunk):
    tok, student, _, pairs, v = models
    seen = _count_head_rows(monkeypatch, chunk)
    value, nll, tokens = lm_loss.score_pairs(student, pairs, tok.pad_token_id, batch_size=4, vocab_size=v)
    ref_nll, ref_tokens = _dense_nll(student, pairs, tok.pad_token_id, v)
    assert tokens == ref_tokens == [len(r) for _, r in pairs]
    assert nll == pytest.approx(ref_nll, rel=1e-6)
    assert value == pytest.approx(sum(ref_nll) / sum(ref_tokens), rel=1e-6)
    # only response rows reach the head, never more than a chunk at a time
    assert seen and max(seen) <= chunk
    assert sum(seen) == sum(tokens)


@pytest.mark.parametrize("chunk", [5, 1000])
def test_exposure_errors_equal_dense_and_stay_in_chunks(models, monkeypatch, chunk):
    tok, student, teacher, pairs, v = models
    seen = _count_head_rows(monkeypatch, chunk)
    prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    got = exposure.sequence_errors(student, teacher, prompts, responses, tok.pad_token_id, batch_size=4, vocab_size=v)
    ref = _dense_kl(student, teacher, pairs, tok.pad_token_id, v)
    assert [len(g) for g in got] == [len(r) for r in responses]
    for g, r in zip(got, ref):
        assert g.tolist() == pytest.approx(r, rel=1e-5, abs=1e-7)
    assert seen and max(seen) <= chunk
    assert sum(seen) == 2 * sum(len(r) for r in responses)  # student and teacher: response rows only


def test_padded_rows_are_cut(models):
    # scoring over all embedding rows instead of the tokenizer's would change the numbers
    tok, student, _, pairs, v = models
    cut = lm_loss.score_pairs(student, pairs, tok.pad_token_id, 4, vocab_size=v)[0]
    full = lm_loss.score_pairs(student, pairs, tok.pad_token_id, 4, vocab_size=v + 7)[0]
    assert abs(cut - full) > 1e-4


def test_lm_loss_scored_once_per_model_and_weights(models, monkeypatch):
    # teacher-forced LM loss does not depend on the evaluation seed: the seeds of one model share a
    # scoring pass, and changed weights (an optimiser step on the same object) are scored again
    from types import SimpleNamespace

    from kdbench.config import EvalConfig
    from kdbench.metrics.base import EvalContext, EvalSession
    from kdbench.schema import Example

    tok, student, _, _, _ = models
    exs = [Example(id=str(i), instruction="", input="", prompt=f"w{i} w{i + 1}", references=[f"w{i + 2} w{i + 3}"])
           for i in range(5)]
    calls = []
    real = lm_loss.score_pairs
    monkeypatch.setattr(lm_loss, "score_pairs", lambda *a, **k: calls.append(1) or real(*a, **k))
    session = EvalSession()

    def run(seed, model):
        ctx = EvalContext(task=SimpleNamespace(), examples=exs, predictions=["" for _ in exs], seed=seed, model=model,
                          tokenizer=tok, eval_config=EvalConfig(seeds=[seed], max_new_tokens=4, batch_size=2),
                          max_prompt_length=16, session=session)
        return lm_loss._lm_loss_metric(ctx), ctx.per_example_rows()

    a, rows_a = run(1, student)
    b, rows_b = run(2, student)
    assert len(calls) == 1 and a == b and rows_a == rows_b
    with torch.no_grad():
        student.transformer.h[0].mlp.c_fc.weight.mul_(1.5)
    c, _ = run(3, student)
    assert len(calls) == 2 and c != a
    run(4, student)
    assert len(calls) == 2
