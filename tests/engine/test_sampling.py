"""Teacher-mixed sampling (kdbench.sampling): the mixture it draws from and the per-token log-probs
it returns, on fixed-distribution fake models (statistics) and on tiny GPT-2 models (exactness)."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench.data import collate
from kdbench.method import gather_logprobs
from kdbench.sampling import SamplingConfig, sample

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models, 1 torch thread

PAD, EOS = 0, 1
V = 6  # 0 pad, 1 eos, 2..5 content tokens


class _Out(dict):
    @property
    def logits(self):
        return self["logits"]


class FixedLM(torch.nn.Module):
    """Next-token distribution independent of the context; EOS and PAD impossible, so every
    response has exactly max_new_tokens tokens."""

    def __init__(self, probs):
        super().__init__()
        full = torch.zeros(V)
        full[2:] = torch.tensor(probs, dtype=torch.float32)
        self.logits_row = torch.nn.Parameter(full.log(), requires_grad=False)  # log 0 = -inf for pad/eos

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, past_key_values=None):
        B, L = input_ids.shape
        return _Out(logits=self.logits_row.expand(B, L, V), past_key_values=None)


Q = [0.7, 0.1, 0.1, 0.1]  # student
P = [0.1, 0.1, 0.1, 0.7]  # teacher
N_PROMPTS, N_NEW = 64, 16  # 1024 draws: std of a frequency <= 0.016


def _draw(alpha, mix=True, seed=0):
    cfg = SamplingConfig(max_new_tokens=N_NEW)
    prompts = [[2, 3]] * N_PROMPTS
    return sample(FixedLM(Q), prompts, cfg, EOS, PAD, seed, batch_size=N_PROMPTS,
                  mix_model=FixedLM(P) if mix else None, mix_alpha=alpha)


def _freqs(rollout):
    toks = torch.tensor([t for r in rollout.response_ids for t in r])
    assert len(toks) == N_PROMPTS * N_NEW
    return [float((toks == v).float().mean()) for v in range(2, V)]


@pytest.mark.parametrize("alpha, expected", [
    (1.0, P),  # alpha = 1: the teacher alone
    (0.0, Q),  # alpha = 0: the student alone
    (0.5, [0.4, 0.1, 0.1, 0.4]),  # the mixture (1 - a) q + a p
    (0.2, [0.58, 0.1, 0.1, 0.22]),  # MiniLLM's alpha
])
def test_mixed_sampling_follows_the_mixture(alpha, expected):
    f = _freqs(_draw(alpha))
    assert f == pytest.approx(expected, abs=0.06)


def test_plain_sampling_follows_the_student():
    assert _freqs(_draw(0.0, mix=False)) == pytest.approx(Q, abs=0.06)


@pytest.mark.parametrize("alpha", [0.2, 0.5])
def test_importance_weights_match_hand_computation(alpha):
    r = _draw(alpha, seed=3)
    for toks, s_lp, t_lp, m_lp in zip(r.response_ids, r.student_logp, r.teacher_logp, r.mix_logp):
        assert len(toks) == len(s_lp) == len(t_lp) == len(m_lp) == N_NEW
        for y, s, t, m in zip(toks, s_lp, t_lp, m_lp):
            q, p = Q[y - 2], P[y - 2]
            assert s == pytest.approx(math.log(q), abs=1e-5)
            assert t == pytest.approx(math.log(p), abs=1e-5)
            assert m == pytest.approx(math.log((1 - alpha) * q + alpha * p), abs=1e-5)
            # the importance weight MiniLLM uses, w = q / mix
            assert math.exp(s - m) == pytest.approx(q / ((1 - alpha) * q + alpha * p), rel=1e-5)


def test_same_seed_same_samples():
    assert _draw(0.2, seed=5).response_ids == _draw(0.2, seed=5).response_ids
    assert _draw(0.2, seed=5).response_ids != _draw(0.2, seed=6).response_ids


# --- real (tiny GPT-2) models: two KV caches stepping together ----------------------------------

def _gpt2(seed, std):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=12, n_positions=32, n_embd=16, n_layer=1, n_head=2, initializer_range=std,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=EOS,
                     eos_token_id=EOS, pad_token_id=PAD)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def pair():
    return _gpt2(0, 0.3), _gpt2(1, 0.6)  # (student, teacher), fairly peaked so EOS ends some rows early


PROMPTS = [[3, 4, 5], [6], [7, 8, 9, 10, 11], [2, 2]]  # ragged: exercises left padding


def test_alpha_one_is_exactly_teacher_sampling(pair):
    student, teacher = pair
    cfg = SamplingConfig(max_new_tokens=10)
    mixed = sample(student, PROMPTS, cfg, EOS, PAD, seed=11, mix_model=teacher, mix_alpha=1.0)
    alone = sample(teacher, PROMPTS, cfg, EOS, PAD, seed=11)
    assert mixed.response_ids == alone.response_ids  # same draws from the same generator


def test_alpha_zero_is_exactly_student_sampling(pair):
    student, teacher = pair
    cfg = SamplingConfig(max_new_tokens=10)
    mixed = sample(student, PROMPTS, cfg, EOS, PAD, seed=11, mix_model=teacher, mix_alpha=0.0)
    alone = sample(student, PROMPTS, cfg, EOS, PAD, seed=11)
    assert mixed.response_ids == alone.response_ids


def test_returned_logprobs_match_a_full_forward(pair):
    """The sampler's cached, left-padded per-token log-probs equal a plain right-padded forward pass
    over the finished sequences, aligned through collate's labels (what MiniLLM's loss relies on)."""
    student, teacher = pair
    r = sample(student, PROMPTS, SamplingConfig(max_new_tokens=10), EOS, PAD, seed=4, mix_model=teacher,
               mix_alpha=0.2)
    b = collate(list(zip(r.prompt_ids, r.response_ids)), PAD,
                {"s": r.student_logp, "t": r.teacher_logp, "m": r.mix_logp})
    mask = b.loss_mask > 0
    with torch.no_grad():
        q = gather_logprobs(student(input_ids=b.input_ids, attention_mask=b.attention_mask).logits, b.labels)
        p = gather_logprobs(teacher(input_ids=b.input_ids, attention_mask=b.attention_mask).logits, b.labels)
    assert torch.allclose(b.extras["s"][mask], q[mask], atol=1e-4)
    assert torch.allclose(b.extras["t"][mask], p[mask], atol=1e-4)
    mix = torch.log(0.8 * q.exp() + 0.2 * p.exp())
    assert torch.allclose(b.extras["m"][mask], mix[mask], atol=1e-4)


# --- no-repeat n-gram blocking, plain and teacher-mixed ------------------------------------------

def _banned(seq, n):
    prefix = tuple(seq[len(seq) - n + 1:])
    return {seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == prefix}


def _has_repeat(seq, n):
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_no_repeat_ngram_holds_for_the_mixture_and_logprobs_are_of_the_banned_distributions(alpha):
    n, prompts = 3, [[2, 3]] * 64
    cfg = SamplingConfig(max_new_tokens=6, no_repeat_ngram_size=n)
    r = sample(FixedLM(Q), prompts, cfg, EOS, PAD, seed=4, batch_size=64, mix_model=FixedLM(P), mix_alpha=alpha)
    n_banned = 0
    for prompt, toks, s_lp, t_lp, m_lp in zip(r.prompt_ids, r.response_ids, r.student_logp, r.teacher_logp,
                                              r.mix_logp):
        assert not _has_repeat(prompt + toks, n)  # alpha = 1 draws from the teacher alone: banned there too
        for i, y in enumerate(toks):
            ban = _banned(prompt + toks[:i], n)
            n_banned += bool(ban)
            keep = [v for v in range(2, V) if v not in ban]
            q = Q[y - 2] / sum(Q[v - 2] for v in keep)
            p = P[y - 2] / sum(P[v - 2] for v in keep)
            assert s_lp[i] == pytest.approx(math.log(q), abs=1e-5)
            assert t_lp[i] == pytest.approx(math.log(p), abs=1e-5)
            assert m_lp[i] == pytest.approx(math.log((1 - alpha) * q + alpha * p), abs=1e-5)
    assert n_banned > 20  # the ban was exercised, not vacuous


def test_padded_vocabulary_rows_are_never_drawn():
    # the teacher puts 0.7 on id 5; with a 5-token tokenizer id 5 is a padded row, not a token
    cfg = SamplingConfig(max_new_tokens=8, vocab_size=5)
    for alpha in (0.0, 0.5, 1.0):
        r = sample(FixedLM(Q), [[2, 3]] * 32, cfg, EOS, PAD, seed=1, mix_model=FixedLM(P), mix_alpha=alpha)
        assert max(t for row in r.response_ids for t in row) <= 4
    plain = sample(FixedLM(P), [[2, 3]] * 32, cfg, EOS, PAD, seed=1)
    assert max(t for row in plain.response_ids for t in row) <= 4


# --- speculative-KD sampling (skd_topk): the student proposes, the teacher replaces outside its top-K --

P_SKD = [0.05, 0.15, 0.3, 0.5]  # distinct teacher probabilities: top-1 = {5}, top-2 = {4, 5}, ...


def _skd(k, q=Q, seed=0):
    prompts = [[2, 3]] * N_PROMPTS
    return sample(FixedLM(q), prompts, SamplingConfig(max_new_tokens=N_NEW), EOS, PAD, seed,
                  batch_size=N_PROMPTS, mix_model=FixedLM(P_SKD), skd_topk=k)


def _skd_expected(k, q=Q):
    top = sorted(range(4), key=lambda v: -P_SKD[v])[:k]
    rejected = sum(q[v] for v in range(4) if v not in top)
    return [(q[v] if v in top else 0.0) + rejected * P_SKD[v] for v in range(4)], rejected


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_skd_sampling_follows_its_rule(k):
    expected, rejected = _skd_expected(k)
    r = _skd(k)
    assert _freqs(r) == pytest.approx(expected, abs=0.05)
    flags = [f for row in r.replaced for f in row]
    assert len(flags) == N_PROMPTS * N_NEW
    assert sum(flags) / len(flags) == pytest.approx(rejected, abs=0.05)
    top = {v + 2 for v in sorted(range(4), key=lambda v: -P_SKD[v])[:k]}
    for toks, rep, m_lp in zip(r.response_ids, r.replaced, r.mix_logp):
        for y, f, m in zip(toks, rep, m_lp):
            assert f == 1.0 or y in top  # a kept proposal is always in the teacher's top-K
            assert m == pytest.approx(math.log(expected[y - 2]), abs=1e-5)


def test_skd_acceptance_rises_with_k():
    acc = [1 - sum(f for row in _skd(k, seed=2).replaced for f in row) / (N_PROMPTS * N_NEW) for k in (1, 2, 3, 4)]
    assert acc[0] < acc[1] < acc[2] < acc[3] == 1.0


def test_skd_rejecting_everything_gives_teacher_tokens():
    q = [0.5, 0.5, 0.0, 0.0]  # every proposal lies outside the teacher's top-2
    r = _skd(2, q=q, seed=4)
    assert all(f == 1.0 for row in r.replaced for f in row)
    assert _freqs(r) == pytest.approx(P_SKD, abs=0.05)


def test_skd_with_k_at_least_vocab_is_exactly_student_sampling(pair):
    student, teacher = pair
    cfg = SamplingConfig(max_new_tokens=10)
    skd = sample(student, PROMPTS, cfg, EOS, PAD, seed=11, mix_model=teacher, skd_topk=12)
    alone = sample(student, PROMPTS, cfg, EOS, PAD, seed=11)
    assert skd.response_ids == alone.response_ids
    assert not any(f for row in skd.replaced for f in row)
    small = sample(student, PROMPTS, cfg, EOS, PAD, seed=11, mix_model=teacher, skd_topk=1)
    assert any(f for row in small.replaced for f in row)
