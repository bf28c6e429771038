"""Chunked logit losses (kdbench/chunked.py): values and gradients equal the unchunked losses for
every divergence, cross-entropy and per-token log-probs (padding, a padded vocabulary, a bias,
temperature, non-default hyperparameters), only masked-in rows in chunks of at most `chunk` ever
reach a loss, chunks hold an element budget whatever the vocabulary, the teacher gets no gradient, and every method through MethodContext trains to the
same weights with the chunked path on and off."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench import divergences as D
from kdbench.chunked import (LazyLogits, chunked_cross_entropy, chunked_logprobs, chunked_token_loss,
                             rows_per_chunk, token_fn_of)
from kdbench.config import TrainConfig
from kdbench.errors import ConfigError
from kdbench.method import MethodContext, cross_entropy, gather_logprobs, make_method
from kdbench.models import build_word_tokenizer
from kdbench.sampling import SamplingConfig
from kdbench.task import TaskOptions
from tasks.toy import ToyTask

pytestmark = pytest.mark.usefixtures("one_thread")
B, L, H, V, PAD_ROWS = 3, 7, 8, 23, 3

# every divergence with non-default settings, so a dropped hyperparameter changes the value
CASES = [(D.forward_kl, {}), (D.reverse_kl, {}), (D.js, {"beta": 0.3}), (D.generalized_jsd, {"beta": 0.7}),
         (D.tvd, {}), (D.skew_forward_kl, {"alpha": 0.3}), (D.skew_reverse_kl, {"alpha": 0.2}),
         (D.alpha_beta, {"alpha": 0.3, "beta": 0.6}), (D.akl, {"mu": 0.7})]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, L, H, generator=g).requires_grad_()
    ws = (torch.randn(V + PAD_ROWS, H, generator=g) * 0.7).requires_grad_()
    bs = (torch.randn(V + PAD_ROWS, generator=g) * 0.1).requires_grad_()
    ht, wt = torch.randn(B, L, H, generator=g), torch.randn(V + PAD_ROWS, H, generator=g)
    with torch.no_grad():
        hs[0, :2] = 1e4  # prompt/padding garbage: must not reach the value
    mask = torch.ones(B, L)
    mask[0, :2] = 0
    mask[2, 5:] = 0
    mask[1, 3] = 0.5  # a weighted position: one token, its weight
    return hs, ws, bs, ht, wt, mask


def _unchunked(fn, hs, ws, bs, ht, wt, mask, T, kw):
    s = (hs @ ws.T + bs)[..., :V]
    with torch.no_grad():
        t = (ht @ wt.T)[..., :V]
    return fn(s / T, t / T, mask, **kw)


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("fn,kw", CASES, ids=[f.__name__ for f, _ in CASES])
def test_every_divergence_value_and_gradient_equal_unchunked(fn, kw, T):
    hs, ws, bs, ht, wt, mask = _setup()
    ref = _unchunked(fn, hs, ws, bs, ht, wt, mask, T, kw)
    ref_g = torch.autograd.grad(ref, [hs, ws, bs])
    s, t = LazyLogits(hs, ws, bs, V), LazyLogits(ht, wt, None, V)
    got = chunked_token_loss(token_fn_of(fn), s, t, mask, temperature=T, chunk=4, **kw)
    got_g = torch.autograd.grad(3.0 * got, [hs, ws, bs])  # backward scales by the upstream gradient
    got, ref = got.detach(), ref.detach()
    assert abs(float(got) - float(ref)) <= 1e-6 * abs(float(ref)) and float(ref) != 0
    for a, b in zip(got_g, ref_g):
        assert _rel(a, 3.0 * b) <= 1e-6
    assert float(hs.grad if hs.grad is not None else 0) == 0  # autograd.grad: nothing accumulated


def test_temperature_and_hyperparameters_change_the_value():
    hs, ws, bs, ht, wt, mask = _setup()
    s, t = LazyLogits(hs, ws, bs, V), LazyLogits(ht, wt, None, V)
    base = chunked_token_loss(D.token_js, s, t, mask, beta=0.3, chunk=4)
    assert float(chunked_token_loss(D.token_js, s, t, mask, beta=0.3, chunk=4, temperature=2.0)) != float(base)
    assert float(chunked_token_loss(D.token_js, s, t, mask, beta=0.6, chunk=4)) != float(base)


def test_only_masked_in_rows_in_chunks_of_at_most_chunk():
    hs, ws, bs, ht, wt, mask = _setup()
    seen = []

    def spy(s_logits, t_logits):
        seen.append(tuple(s_logits.shape))
        assert t_logits.shape == s_logits.shape
        return D.token_forward_kl(s_logits, t_logits)
    spy.is_token_fn = True
    chunked_token_loss(spy, LazyLogits(hs, ws, bs, V), LazyLogits(ht, wt, None, V), mask, chunk=4).backward()
    assert all(n <= 4 and v == V for n, v in seen)
    assert sum(n for n, _ in seen) == int((mask > 0).sum())


def test_teacher_gets_no_gradient_and_dense_teacher_works():
    hs, ws, bs, ht, wt, mask = _setup()
    wt.requires_grad_()
    ht.requires_grad_()
    loss = chunked_token_loss(D.token_reverse_kl, LazyLogits(hs, ws, bs, V), LazyLogits(ht, wt, None, V), mask, chunk=5)
    loss.backward()
    assert wt.grad is None and ht.grad is None and ws.grad is not None
    with torch.no_grad():
        dense_t = LazyLogits.dense((ht @ wt.T)[..., :V])
    again = chunked_token_loss(D.token_reverse_kl, LazyLogits(hs, ws, bs, V), dense_t, mask, chunk=5)
    assert abs(float(again) - float(loss)) <= 1e-6 * abs(float(loss))


def test_cross_entropy_and_logprobs_equal_unchunked():
    hs, ws, bs, *_ = _setup()
    labels = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(1))
    labels[0, :3] = -100
    labels[2, 4:] = -100
    full = (hs @ ws.T + bs)[..., :V]
    ref, ref_lp = cross_entropy(full, labels), gather_logprobs(full, labels)
    s = LazyLogits(hs, ws, bs, V)
    got, got_lp = chunked_cross_entropy(s, labels, chunk=4), chunked_logprobs(s, labels, chunk=4)
    assert abs(float(got) - float(ref)) <= 1e-6 * abs(float(ref))
    assert torch.allclose(got_lp, ref_lp, rtol=1e-6, atol=1e-6) and bool((got_lp[labels < 0] == 0).all())
    weights = torch.randn(B, L)  # a per-token upstream gradient, as a policy gradient gives
    for a, b in zip(torch.autograd.grad(got + (got_lp * weights).sum(), [hs, ws, bs]),
                    torch.autograd.grad(ref + (ref_lp * weights).sum(), [hs, ws, bs])):
        assert _rel(a, b) <= 1e-6


def test_empty_mask_is_zero_with_a_graph_and_bad_chunk_is_refused():
    hs, ws, bs, ht, wt, mask = _setup()
    loss = chunked_token_loss(D.token_forward_kl, LazyLogits(hs, ws, bs, V), LazyLogits(ht, wt, None, V),
                              torch.zeros_like(mask), chunk=4)
    loss.backward()
    assert float(loss) == 0 and float(ws.grad.abs().sum()) == 0
    with pytest.raises(ValueError, match="chunk"):
        chunked_cross_entropy(LazyLogits(hs, ws, bs, V), torch.zeros(B, L, dtype=torch.long), chunk=0)
    with pytest.raises(ValueError, match="per-token function"):
        token_fn_of(lambda s, t, m: s.sum())


def test_config_validates_chunk_settings():
    with pytest.raises(ConfigError, match="chunked_loss"):
        TrainConfig(chunked_loss="yes")
    with pytest.raises(ConfigError, match="loss_chunk_tokens"):
        TrainConfig(loss_chunk_tokens=0)
    with pytest.raises(ConfigError, match="loss_chunk_elements"):
        TrainConfig(loss_chunk_elements=0)


def test_rows_per_chunk_holds_an_element_budget():
    budget = 256 * 32768  # TrainConfig's default
    assert TrainConfig().loss_chunk_elements == budget and TrainConfig().loss_chunk_tokens == 256
    assert rows_per_chunk(8000, 256, budget) == 256  # the row cap: chunks as before at small vocabularies
    assert rows_per_chunk(32000, 256, budget) == 256 and rows_per_chunk(32768, 256, budget) == 256
    assert rows_per_chunk(49152, 256, budget) == 170  # 8,388,608 / 49,152 = 170.7
    assert rows_per_chunk(128000, 256, budget) == 65  # 8,388,608 / 128,000 = 65.5
    assert rows_per_chunk(10 ** 8, 256, budget) == 1  # at least one row
    assert rows_per_chunk(100, 7, 1000) == 7 and rows_per_chunk(100, 70, 1000) == 10
    with pytest.raises(ValueError, match="budget_elements"):
        rows_per_chunk(100, 7, 0)


# --------------------------------------------------------------------------- through MethodContext

@pytest.fixture(scope="module")
def world():
    task = ToyTask(TaskOptions(extra={"n_creatures": 4, "n_train": 24, "n_dev": 4, "n_test": 4, "pretrain_docs": 8}))
    tok = build_word_tokenizer(task.vocabulary())
    return SimpleNamespace(tok=tok, exs=task.examples("train"), dev=task.examples("dev"))


def _gpt2(tok, seed, std):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=40, n_embd=16, n_layer=1, n_head=2,
                                      initializer_range=std, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id))


def _first_step(world, name, mode, overrides=None, **train):
    """(loss, logs, gradient per parameter) of the method's first batch: one loss_fn call, no optimizer
    (AdamW would turn rounding-level differences of zero gradients into whole steps)."""
    cfg = TrainConfig(steps=2, batch_size=4, lr=1e-2, schedule="constant", log_every=1, seed=0, chunked_loss=mode,
                      **{"loss_chunk_tokens": 7, **train})
    ctx = MethodContext(student=_gpt2(world.tok, 1, 0.3), teacher=_gpt2(world.tok, 7, 0.5).eval(), tokenizer=world.tok,
                        train_examples=world.exs, train_cfg=cfg, max_length=40, max_prompt_length=20, run_dir=None,
                        sampling=SamplingConfig(max_new_tokens=4), teacher_samples_fn=lambda: world.exs,
                        device="cpu", method_name=name, progress=False)
    ctx.vocab_size = len(world.tok)
    out = {}

    def fit(loss_fn, batches):
        res = loss_fn(next(iter(batches)))
        res.loss.backward()
        out.update(loss=float(res.loss), logs=res.logs, grads={k: p.grad.clone() for k, p in
                                                               ctx.student.named_parameters() if p.grad is not None})
    ctx.fit = fit
    make_method(name, overrides).train(ctx)
    return ctx, out


def test_context_splits_models_only_when_chunking(world):
    on, _ = _first_step(world, "sft", "on")
    off, _ = _first_step(world, "sft", "auto")  # the toy vocabulary: auto is off
    batch = on.encode(world.exs[:2])
    assert on.loss_chunk == 7 and off.loss_chunk == 0
    assert on.outputs(on.student, batch).hidden is not None and on.teacher_outputs(batch).hidden is not None
    assert off.outputs(off.student, batch).logits is not None


@pytest.mark.parametrize("name,overrides", [
    ("sft", None), ("kd", {"temperature": 2.0}), ("fkl", {"kd_ratio": 0.7}), ("rkl", {"kd_ratio": 0.6}),
    ("abkd", None), ("akl", {"kd_ratio": 0.5}), ("taid", None), ("tvd", {"data": "gold"}),
    ("js", {"data": "gold", "beta": 0.3}), ("gkd", None), ("single_step", None), ("seqkd", None),
    ("minillm", {"lm_coef": 0.0}), ("ranking", None), ("distillm", {"dev_size": 4})])
def test_every_method_same_loss_and_gradient_chunked_or_not(world, name, overrides):
    _, a = _first_step(world, name, "on", overrides)
    _, b = _first_step(world, name, "off", overrides)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert a["logs"] == pytest.approx(b["logs"], rel=1e-5, abs=1e-7)
    assert a["grads"].keys() == b["grads"].keys() and a["grads"]
    for k in a["grads"]:
        assert _rel(a["grads"][k], b["grads"][k]) <= 1e-5, k


@pytest.mark.parametrize("name", ["sft", "kd", "gkd"])
def test_context_sizes_chunks_by_the_element_budget(world, name):
    """train.loss_chunk_elements sets the rows per chunk from the vocabulary (the larger of student and
    teacher), under the loss_chunk_tokens cap; every [rows, V] a loss sees holds the budget, and the
    loss and gradients still equal the unchunked ones."""
    V = len(world.tok)
    budget = 3 * V + 2  # 3 rows per chunk, below the cap of 7
    seen = []
    ctx, a = _first_step(world, name, "on", loss_chunk_elements=budget)
    _, b = _first_step(world, name, "off")
    assert ctx.loss_chunk == 3
    ctx.teacher_vocab_size = 2 * V  # a wider teacher vocabulary (cross-tokenizer) sizes the chunks
    assert ctx.loss_chunk == 1
    ctx.teacher_vocab_size = None

    def spy(s_logits, t_logits):
        seen.append(tuple(s_logits.shape))
        return D.token_forward_kl(s_logits, t_logits)
    spy.is_token_fn = True
    batch = ctx.encode(world.exs[:4])
    ctx.divergence(spy, ctx.outputs(ctx.student, batch), ctx.teacher_outputs(batch), batch.loss_mask)
    assert seen and all(n * v <= budget and v == V for n, v in seen)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    for k in a["grads"]:
        assert _rel(a["grads"][k], b["grads"][k]) <= 1e-5, k


def test_bf16_gradients_accumulate_in_fp32_and_match_the_unchunked_loss():
    """A bf16 student (mixed precision keeps the head in bf16 on GPUs): the chunked gradients of hidden
    states, the padded weight and the bias match the unchunked loss's to bf16 precision, arrive in bf16,
    and the padded rows get none."""
    hs, ws, bs, ht, wt, mask = _setup(3)
    with torch.no_grad():
        hs[0, :2] = 0.5
    h16, w16, b16 = (x.detach().to(torch.bfloat16).requires_grad_() for x in (hs, ws, bs))
    s = LazyLogits(h16, w16, b16, V)
    t = LazyLogits(ht.to(torch.bfloat16), wt.to(torch.bfloat16), None, V)
    chunked_token_loss(D.token_forward_kl, s, t, mask, chunk=2).backward()
    ref = [x.detach().float().requires_grad_() for x in (h16, w16, b16)]
    with torch.no_grad():
        tl = (ht.to(torch.bfloat16).float() @ wt.to(torch.bfloat16).float().T)[..., :V]
    D.forward_kl((ref[0] @ ref[1].T + ref[2])[..., :V], tl, mask).backward()
    for got, want in zip((h16, w16, b16), ref):
        assert got.grad.dtype == torch.bfloat16
        assert _rel(got.grad.float(), want.grad) < 2e-2
    assert (w16.grad[V:] == 0).all() and (b16.grad[V:] == 0).all()
