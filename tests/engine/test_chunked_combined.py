"""CE plus a divergence from one lm_head pass (chunked.chunked_ce_and_token_loss, the objective of
kd, seqkd and the fkl family): value, both logged terms and the gradient equal the two separate
unchunked losses, including rows where only one of the two applies (a labelled row outside the
divergence mask and the reverse), and the head is computed once per chunk, not once per term.
"""
from __future__ import annotations

import pytest
import torch

from kdbench import divergences as D
from kdbench.chunked import LazyLogits, chunked_ce_and_token_loss, token_fn_of
from kdbench.method import cross_entropy

from test_chunked import CASES, B, L, V, _rel, _setup, _unchunked

pytestmark = pytest.mark.usefixtures("one_thread")


def _labels(mask):
    labels = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(3))
    labels[mask == 0] = -100
    labels[1, 6] = -100  # in the divergence mask, no label: D only
    labels[2, 6] = 5  # labelled, outside the divergence mask: CE only
    return labels


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("fn,kw", CASES[:4] + CASES[-1:], ids=[f.__name__ for f, _ in CASES[:4] + CASES[-1:]])
def test_equals_separate_losses(fn, kw, T):
    hs, ws, bs, ht, wt, mask = _setup()
    labels = _labels(mask)
    assert bool(mask[1, 6] > 0) and bool(mask[2, 6] == 0)
    a, b = 0.3, 0.7 * T * T
    ref_ce = cross_entropy((hs @ ws.T + bs)[..., :V], labels)
    ref_d = _unchunked(fn, hs, ws, bs, ht, wt, mask, T, kw)
    ref = a * ref_ce + b * ref_d
    ref_g = torch.autograd.grad(ref, [hs, ws, bs])
    loss, ce, d = chunked_ce_and_token_loss(token_fn_of(fn), LazyLogits(hs, ws, bs, V), LazyLogits(ht, wt, None, V),
                                            labels, mask, ce_weight=a, div_weight=b, temperature=T, chunk=4, **kw)
    got_g = torch.autograd.grad(2.0 * loss, [hs, ws, bs])
    assert not ce.requires_grad and not d.requires_grad
    for got, want in ((loss.detach(), ref.detach()), (ce, ref_ce.detach()), (d, ref_d.detach())):
        assert abs(float(got) - float(want)) <= 1e-6 * abs(float(want)) and float(want) != 0
    for g, r in zip(got_g, ref_g):
        assert _rel(g, 2.0 * r) <= 1e-6


def test_one_head_pass_per_chunk(monkeypatch):
    hs, ws, bs, ht, wt, mask = _setup()
    labels = _labels(mask)
    calls = []
    real = LazyLogits.head

    def head(self, h, weight=None, bias=None):
        calls.append((self.weight is ws, h.shape[0]))
        return real(self, h, weight, bias)

    monkeypatch.setattr(LazyLogits, "head", head)
    loss, _, _ = chunked_ce_and_token_loss(D.token_forward_kl, LazyLogits(hs, ws, bs, V), LazyLogits(ht, wt, None, V),
                                           labels, mask, ce_weight=0.5, div_weight=0.5, chunk=4)
    loss.backward()
    rows = int(((labels >= 0) | (mask > 0)).sum())
    student = [n for is_s, n in calls if is_s]
    # each student row through the head once: two separate losses would be 2 x rows
    assert sum(student) == rows and max(student) <= 4


def test_dense_student_and_empty_rows():
    hs, ws, bs, ht, wt, mask = _setup()
    labels = _labels(mask)
    with torch.no_grad():
        dense_s = LazyLogits.dense((hs @ ws.T + bs)[..., :V])
    loss, ce, d = chunked_ce_and_token_loss(D.token_reverse_kl, dense_s, LazyLogits(ht, wt, None, V), labels, mask,
                                            ce_weight=0.5, div_weight=0.5, chunk=3)
    lazy, _, _ = chunked_ce_and_token_loss(D.token_reverse_kl, LazyLogits(hs, ws, bs, V), LazyLogits(ht, wt, None, V),
                                           labels, mask, ce_weight=0.5, div_weight=0.5, chunk=3)
    assert abs(float(loss) - float(lazy)) <= 1e-6 * abs(float(lazy))
    none = torch.zeros_like(mask)
    z, zc, zd = chunked_ce_and_token_loss(D.token_forward_kl, LazyLogits(hs, ws, bs, V), LazyLogits(ht, wt, None, V),
                                          torch.full_like(labels, -100), none, ce_weight=0.5, div_weight=0.5, chunk=3)
    assert float(z) == float(zc) == float(zd) == 0.0
    with pytest.raises(ValueError, match="must agree"):
        chunked_ce_and_token_loss(D.token_forward_kl, LazyLogits(hs, ws, bs, V), LazyLogits(ht, wt, None, V),
                                  labels[:, :3], mask, ce_weight=0.5, div_weight=0.5)
