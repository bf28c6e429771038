"""Teacher top-k cache: exact at k = V, normalised, error falling with k; kd trains the same with it."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench.config import TrainConfig
from kdbench.errors import ConfigError
from kdbench.method import MethodContext, make_method
from kdbench.models import build_word_tokenizer
from kdbench.plugins import load_plugins
from kdbench.task import TaskOptions
from kdbench.teacher_cache import topk_compress, topk_error, topk_expand
from tasks.toy import ToyTask

load_plugins()


def test_topk_round_trip_exact_at_full_k_and_error_falls_with_k():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 40, generator=g) * 3
    v, i, t = topk_compress(logits, 40)
    # float16 log-probs: relative error <= 2^-11 (0.008 nats on a log-prob of -16)
    torch.testing.assert_close(topk_expand(v, i, t, 40), torch.log_softmax(logits, -1), atol=1e-3, rtol=1e-3)
    mask = torch.ones(50)
    errs = [topk_error(logits, mask, k)["kl_mean"] for k in (2, 8, 20, 40)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-4 and errs[0] > 1e-2
    q = topk_expand(*topk_compress(logits, 8), 40)
    torch.testing.assert_close(q.exp().sum(-1), torch.ones(50))


@pytest.fixture(scope="module")
def world():
    task = ToyTask(TaskOptions(extra={"n_creatures": 4, "n_train": 32, "n_dev": 4, "n_test": 4, "pretrain_docs": 10}))
    return SimpleNamespace(tok=build_word_tokenizer(task.vocabulary()), exs=task.examples("train"))


def _gpt2(tok, seed, std):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=40, n_embd=32, n_layer=1, n_head=2,
                                      initializer_range=std, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id))


def _kd(world, tmp_path, **overrides):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ctx = MethodContext(student=_gpt2(world.tok, 1, 0.02), teacher=_gpt2(world.tok, 7, 0.5).eval(),
                            tokenizer=world.tok, train_examples=world.exs,
                            train_cfg=TrainConfig(steps=6, batch_size=8, lr=1e-2, schedule="constant", log_every=1),
                            max_length=40, max_prompt_length=20, run_dir=tmp_path, device="cpu", method_name="kd",
                            progress=False)
        make_method("kd", overrides).train(ctx)
        return ctx
    finally:
        torch.set_num_threads(n)


def test_kd_with_full_topk_cache_matches_the_live_teacher(world, tmp_path):
    live = _kd(world, tmp_path / "live")
    vocab = len(world.tok)
    cached = _kd(world, tmp_path / "cached", teacher_cache="topk", topk=vocab)
    for a, b in zip(live.history, cached.history):
        assert math.isclose(a["loss"], b["loss"], rel_tol=5e-3), (a, b)  # fp16 log-probs in the cache
    # the teacher read each training example once, not 6 steps x 8 rows
    n_train_tokens = int(live.encode(world.exs).attention_mask.sum())
    assert cached.counters["teacher_forward_tokens"] == n_train_tokens
    assert (tmp_path / "cached" / f"teacher_topk_k{vocab}.pt").exists()


def test_kd_cache_option_is_validated():
    with pytest.raises(ConfigError, match="teacher_cache"):
        make_method("kd", {"teacher_cache": "lru"})
