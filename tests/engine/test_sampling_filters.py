"""Decoding filters (kdbench.sampling.filter_logits): exact kept sets and renormalised probabilities
for temperature, top-k and top-p on hand cases, then the same distributions as sample frequencies
through `sample()`, plain and teacher-mixed, on fixed-distribution models."""
from __future__ import annotations

import pytest
import torch

from kdbench.sampling import SamplingConfig, filter_logits, sample

pytestmark = pytest.mark.usefixtures("one_thread")

P4 = [0.5, 0.3, 0.15, 0.05]  # sorted, so kept sets read as prefixes; cumulative 0.5, 0.8, 0.95, 1


def probs(cfg: SamplingConfig, p=P4) -> list[float]:
    out = torch.softmax(filter_logits(torch.tensor([p]).log(), cfg), -1)[0]
    return out.tolist()


def norm(xs):
    s = sum(xs)
    return [x / s for x in xs]


@pytest.mark.parametrize("cfg, expected", [
    (SamplingConfig(), P4),  # T 1, top-p 1, top-k 0: unchanged (MiniLLM's protocol)
    # top-p keeps the smallest prefix whose mass reaches p (the token that crosses p is kept)
    (SamplingConfig(top_p=0.4), [1.0, 0, 0, 0]),
    (SamplingConfig(top_p=0.6), [0.5 / 0.8, 0.3 / 0.8, 0, 0]),
    (SamplingConfig(top_p=0.9), norm([0.5, 0.3, 0.15, 0])),
    (SamplingConfig(top_p=0.99), P4),
    # top-k keeps the k most likely
    (SamplingConfig(top_k=1), [1.0, 0, 0, 0]),
    (SamplingConfig(top_k=3), norm([0.5, 0.3, 0.15, 0])),
    (SamplingConfig(top_k=4), P4),
    # temperature divides the logits: p^(1/T), renormalised
    (SamplingConfig(temperature=2.0), norm([x ** 0.5 for x in P4])),
    (SamplingConfig(temperature=0.5), norm([x ** 2 for x in P4])),
    # temperature first, then the filters: at T 0.5 the top token holds 0.685 > 0.6 alone
    (SamplingConfig(temperature=0.5, top_p=0.6), [1.0, 0, 0, 0]),
    (SamplingConfig(temperature=2.0, top_k=2), norm([0.5 ** 0.5, 0.3 ** 0.5, 0, 0])),
    # top-k then top-p on what is left: top-2 renormalised is 0.625 / 0.375, p 0.5 keeps the first
    (SamplingConfig(top_k=2, top_p=0.5), [1.0, 0, 0, 0]),
])
def test_filter_keeps_the_exact_set_and_renormalises(cfg, expected):
    assert probs(cfg) == pytest.approx(expected, abs=1e-6)


def test_filter_works_on_unsorted_rows_and_per_row():
    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3], [0.3, 0.15, 0.05, 0.5]]).log()
    out = torch.softmax(filter_logits(logits, SamplingConfig(top_p=0.6)), -1)
    assert out.flatten().tolist() == pytest.approx([0, 0.625, 0, 0.375, 0.375, 0, 0, 0.625], abs=1e-6)
    out = torch.softmax(filter_logits(logits, SamplingConfig(top_k=1)), -1)
    assert out.flatten().tolist() == pytest.approx([0, 1, 0, 0, 0, 0, 0, 1], abs=1e-6)


# --- through sample(): frequencies on context-free models --------------------------------------

PAD, EOS, V = 0, 1, 6  # 0 pad, 1 eos, 2..5 content


class _Out(dict):
    @property
    def logits(self):
        return self["logits"]


class FixedLM(torch.nn.Module):
    """The same next-token distribution everywhere; pad and EOS impossible."""

    def __init__(self, p):
        super().__init__()
        row = torch.zeros(V)
        row[2:] = torch.tensor(p)
        self.row = torch.nn.Parameter(row.log(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, past_key_values=None):
        return _Out(logits=self.row.expand(*input_ids.shape, V), past_key_values=None)


N, NEW = 256, 16  # 4096 draws: a frequency's standard error is at most 0.008


def freqs(cfg_kw, teacher=None, alpha=0.0, seed=0):
    cfg = SamplingConfig(max_new_tokens=NEW, **cfg_kw)
    r = sample(FixedLM(P4), [[2, 3]] * N, cfg, EOS, PAD, seed, batch_size=N,
               mix_model=FixedLM(teacher) if teacher else None, mix_alpha=alpha)
    toks = torch.tensor([t for row in r.response_ids for t in row])
    assert len(toks) == N * NEW
    return [float((toks == v).float().mean()) for v in range(2, V)]


@pytest.mark.parametrize("cfg_kw, expected", [
    ({"top_p": 0.6}, [0.625, 0.375, 0, 0]),
    ({"top_k": 3}, norm([0.5, 0.3, 0.15, 0])),
    ({"temperature": 3.0}, norm([x ** (1 / 3) for x in P4])),
])
def test_sample_frequencies_follow_the_filtered_distribution(cfg_kw, expected):
    f = freqs(cfg_kw)
    assert f == pytest.approx(expected, abs=0.035)
    assert [x == 0 for x in f] == [x == 0 for x in expected]  # filtered tokens are never drawn


def test_teacher_mixed_sampling_filters_both_models_then_mixes():
    # top-1 of the student is token 2, of the teacher token 5: the mixture is alpha on each
    teacher = list(reversed(P4))
    f = freqs({"top_k": 1}, teacher=teacher, alpha=0.3)
    assert f == pytest.approx([0.7, 0, 0, 0.3], abs=0.035) and f[1] == f[2] == 0
    # top-p 0.6 keeps two tokens of each; mixture 0.7 * (0.625, 0.375, 0, 0) + 0.3 * (0, 0, 0.375, 0.625)
    f = freqs({"top_p": 0.6}, teacher=teacher, alpha=0.3)
    assert f == pytest.approx([0.4375, 0.2625, 0.1125, 0.1875], abs=0.035)
