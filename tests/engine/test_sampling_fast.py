"""The sampler's fast paths (kdbench.sampling): the incremental n-gram ban equals a rescan of every
sequence, and transformers' path on a static KV cache with its ready-made decode mask gives the same
tokens as the model's own growing cache and (as the lean decoder, kdbench.lean) the same log-probs as
one full forward over the finished sequences."""
from __future__ import annotations

import random

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from kdbench import sampling
from kdbench.data import collate
from kdbench.method import gather_logprobs
from kdbench.sampling import SamplingConfig, _NgramBan, sample

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, EOS, V = 0, 1, 24


def _rescan(seq, n):
    """The banned set by definition: every token that followed an earlier occurrence of the last n-1 tokens."""
    if len(seq) < n:
        return set()
    prefix = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
    return {seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == prefix}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_incremental_ngram_ban_equals_a_rescan(n):
    rng = random.Random(n)
    prompts = [[rng.randrange(2, 5) for _ in range(rng.randrange(0, 7))] for _ in range(12)]  # tiny alphabet: repeats
    ban, seqs = _NgramBan(prompts, n), [list(p) for p in prompts]
    hits = 0
    for _ in range(25):
        rows, cols = ban.banned()
        got = [set() for _ in prompts]
        for r, c in zip(rows, cols):
            got[r].add(c)
        want = [_rescan(s, n) for s in seqs]
        assert got == want
        assert len(rows) == sum(len(w) for w in want)  # each banned token once per row
        hits += sum(bool(w) for w in want)
        toks = [rng.randrange(2, 5) for _ in prompts]
        alive = [rng.random() < 0.8 for _ in prompts]  # finished rows stop growing
        ban.push(toks, alive)
        for s, y, a in zip(seqs, toks, alive):
            if a:
                s.append(y)
    assert hits > 15  # the ban was exercised


def _gpt2(seed, std):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=64, n_embd=16, n_layer=2, n_head=2,
                                      initializer_range=std, bos_token_id=EOS, eos_token_id=EOS,
                                      pad_token_id=PAD)).eval()


def _llama(seed, std):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                        initializer_range=std, bos_token_id=EOS, eos_token_id=EOS,
                                        pad_token_id=PAD)).eval()


PROMPTS = [[3, 4, 5], [6], [7, 8, 9, 10, 11, 12, 13], [2, 2], [9, 3, 3, 3, 3]]  # ragged: left padding


@pytest.fixture(params=["gpt2", "llama"])
def pair(request):
    make = _gpt2 if request.param == "gpt2" else _llama
    return make(0, 0.2), make(1, 0.5)  # (student, teacher)


@pytest.fixture
def transformers_path(monkeypatch):
    """Sample through transformers' forward (_Stepper), not the lean decoder these architectures get."""
    monkeypatch.setattr(sampling, "lean_stepper", lambda *a, **k: None)


def test_hf_models_step_on_a_static_cache_with_a_ready_mask(pair):
    student, _ = pair
    ids, att = sampling._left_pad(PROMPTS, PAD)
    st = sampling._Stepper(student, ids, att, max_new=4)
    assert st.cache is not None and st.mask4 is not None  # the fast path, not the fallback
    assert st.logits.shape == (len(PROMPTS), V)
    st.step(torch.full((len(PROMPTS),), 5))
    assert st.mask[:, : st.n].sum(-1).tolist() == [len(p) + 1 for p in PROMPTS]
    assert st.mask4[:, 0, 0].long().equal(st.mask)  # the 4-D mask sdpa reads is the same bookkeeping


def test_static_cache_samples_what_the_growing_cache_samples(pair, monkeypatch, transformers_path):
    student, teacher = pair
    cfg = SamplingConfig(max_new_tokens=30, no_repeat_ngram_size=3)
    fast = sample(student, PROMPTS, cfg, EOS, PAD, seed=7, mix_model=teacher, mix_alpha=0.3)
    monkeypatch.setattr(sampling, "_static_cache", lambda model, max_len: None)
    slow = sample(student, PROMPTS, cfg, EOS, PAD, seed=7, mix_model=teacher, mix_alpha=0.3)
    assert fast.response_ids == slow.response_ids
    assert sum(len(r) for r in fast.response_ids) > 40  # long enough to fill the cache well past the prompts
    for a, b in ((fast.student_logp, slow.student_logp), (fast.teacher_logp, slow.teacher_logp)):
        assert [len(r) for r in a] == [len(r) for r in b]
        assert torch.allclose(torch.tensor(sum(a, [])), torch.tensor(sum(b, [])), atol=1e-5)
    plain = sample(student, PROMPTS, cfg, EOS, PAD, seed=7)
    assert plain.student_logp == [[] for _ in PROMPTS] and plain.replaced == []  # Rollout's shape for plain sampling


@pytest.mark.parametrize("path", ["lean", "transformers"])
def test_static_cache_logprobs_equal_a_full_forward(pair, path, monkeypatch):
    """Cached, left-padded, static-cache steps against one right-padded forward over the finished sequences."""
    student, teacher = pair
    if path == "transformers":
        monkeypatch.setattr(sampling, "lean_stepper", lambda *a, **k: None)
    r = sample(student, PROMPTS, SamplingConfig(max_new_tokens=30), EOS, PAD, seed=4, mix_model=teacher,
               mix_alpha=0.5)
    b = collate(list(zip(r.prompt_ids, r.response_ids)), PAD, {"s": r.student_logp, "t": r.teacher_logp})
    mask = b.loss_mask > 0
    assert int(mask.sum()) > 40
    with torch.no_grad():
        q = gather_logprobs(student(input_ids=b.input_ids, attention_mask=b.attention_mask).logits, b.labels)
        p = gather_logprobs(teacher(input_ids=b.input_ids, attention_mask=b.attention_mask).logits, b.labels)
    assert torch.allclose(b.extras["s"][mask], q[mask], atol=1e-4)
    assert torch.allclose(b.extras["t"][mask], p[mask], atol=1e-4)
