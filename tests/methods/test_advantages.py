"""MiniLLM advantage, whitening and PPO-loss functions against hand-written expected arrays."""
from __future__ import annotations

import math

import pytest
import torch

from kdbench.advantages import long_range_advantages, ppo_clipped_loss, sequence_rewards, whiten

NAN = float("nan")

# row 0: four valid tokens; row 1: EOS after two tokens, padding holds garbage
REWARDS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 99.0, NAN]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


def approx(t: torch.Tensor, expected, abs=1e-6):
    assert torch.isfinite(t).all()
    assert len(t.tolist()) == len(expected)
    for row, exp_row in zip(t.tolist(), expected):
        assert row == pytest.approx(exp_row, abs=abs)


def test_gamma_half_without_length_norm():
    a = long_range_advantages(REWARDS, MASK, gamma=0.5, length_norm=False)
    # A_0 = 2 + .5*3 + .25*4 ; A_1 = 3 + .5*4 ; A_2 = 4 ; A_3 = 0 (nothing follows)
    approx(a, [[4.5, 5.0, 4.0, 0.0], [2.0, 0.0, 0.0, 0.0]])


def test_gamma_half_with_length_norm():
    a = long_range_advantages(REWARDS, MASK, gamma=0.5, length_norm=True)
    # N_t = [3, 2, 1, 0] and [1, 0, -, -]
    approx(a, [[4.5 / 3, 5.0 / 2, 4.0, 0.0], [2.0, 0.0, 0.0, 0.0]])


def test_gamma_one_and_zero():
    a1 = long_range_advantages(REWARDS, MASK, gamma=1.0, length_norm=True)
    approx(a1, [[9 / 3, 7 / 2, 4.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    a1n = long_range_advantages(REWARDS, MASK, gamma=1.0, length_norm=False)
    approx(a1n, [[9.0, 7.0, 4.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    a0 = long_range_advantages(REWARDS, MASK, gamma=0.0, length_norm=False)
    approx(a0, [[2.0, 3.0, 4.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    a0n = long_range_advantages(REWARDS, MASK, gamma=0.0, length_norm=True)
    approx(a0n, [[2 / 3, 3 / 2, 4.0, 0.0], [2.0, 0.0, 0.0, 0.0]])


def test_lmops_mode_sums_from_t():
    a = long_range_advantages(REWARDS, MASK, gamma=0.5, length_norm=False, mode="lmops")
    # A_3 = 4 ; A_2 = 3 + .5*4 ; A_1 = 2 + .5*5 ; A_0 = 1 + .5*4.5 ; row 1: A_1 = 2, A_0 = 1 + .5*2
    approx(a, [[3.25, 4.5, 5.0, 4.0], [2.0, 2.0, 0.0, 0.0]])
    an = long_range_advantages(REWARDS, MASK, gamma=0.5, length_norm=True, mode="lmops")
    # the count includes t: N'_t = [4, 3, 2, 1] and [2, 1]
    approx(an, [[3.25 / 4, 4.5 / 3, 5.0 / 2, 4.0], [1.0, 2.0, 0.0, 0.0]])


def _lmops_reference(rewards, mask, gamma):
    """LMOps minillm/losses.py _get_advantages_and_returns (before whitening), re-derived as a loop."""
    B, T = rewards.shape
    out = torch.zeros(B, T)
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                terms = [gamma ** (u - t) * float(rewards[b, u]) for u in range(t, T) if mask[b, u]]
                out[b, t] = sum(terms) / len(terms)
    return out


def test_lmops_mode_matches_upstream_and_is_paper_shifted_by_one():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 7, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 1 + [0] * 6])
    lm = long_range_advantages(r, mask, gamma=0.9, mode="lmops")
    assert torch.allclose(lm, _lmops_reference(r, mask, 0.9), atol=1e-6)
    paper = long_range_advantages(r, mask, gamma=0.9, mode="paper")
    # the audit's finding: paper's A_t equals lmops' A_{t+1} (valid positions with a successor)
    assert torch.allclose(paper[0, :-1], lm[0, 1:], atol=1e-6)
    assert torch.allclose(paper[1, :3], lm[1, 1:4], atol=1e-6)
    assert not torch.allclose(paper, lm)
    with pytest.raises(ValueError, match="paper, lmops"):
        long_range_advantages(r, mask, mode="trl")


def test_default_gamma_is_minillm():
    r = torch.tensor([[0.0, 1.0, 1.0]])
    a = long_range_advantages(r, torch.ones(1, 3))
    approx(a, [[(1 + 0.95) / 2, 1.0, 0.0]])


def test_padding_values_do_not_matter():
    other = REWARDS.clone()
    other[1, 2:] = torch.tensor([-1e6, float("inf")])
    for norm in (True, False):
        a = long_range_advantages(REWARDS, MASK, gamma=0.9, length_norm=norm)
        b = long_range_advantages(other, MASK, gamma=0.9, length_norm=norm)
        assert torch.equal(a, b)


def test_discounting_is_relative_and_rows_independent():
    # the suffix [2, 3, 4] of row 0, as its own sequence, must give row 0's tail advantages
    full = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    suffix = torch.tensor([[2.0, 3.0, 4.0, 0.0, 0.0, 0.0]])
    suffix_mask = torch.tensor([[1, 1, 1, 0, 0, 0]])
    for norm in (True, False):
        a_full = long_range_advantages(full, torch.ones(1, 4), gamma=0.7, length_norm=norm)
        a_suf = long_range_advantages(suffix, suffix_mask, gamma=0.7, length_norm=norm)
        assert a_suf[0, :3].tolist() == pytest.approx(a_full[0, 1:].tolist(), abs=1e-6)
        assert a_suf[0, 3:].tolist() == [0.0, 0.0, 0.0]
    # a row's advantages do not depend on the other rows of the batch (or on T)
    batch = torch.tensor([[2.0, 3.0, 4.0, 0.0, 0.0, 0.0], [5.0, 1.0, 2.0, 7.0, 3.0, 1.0]])
    bmask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    a_b = long_range_advantages(batch, bmask, gamma=0.7)
    a_s = long_range_advantages(suffix, suffix_mask, gamma=0.7)
    assert a_b[0].tolist() == pytest.approx(a_s[0].tolist(), abs=1e-6)


def test_single_token_and_bad_gamma():
    a = long_range_advantages(torch.tensor([[5.0, 9.0]]), torch.tensor([[1, 0]]), gamma=0.9)
    assert a.tolist() == [[0.0, 0.0]]
    with pytest.raises(ValueError, match="gamma"):
        long_range_advantages(REWARDS, MASK, gamma=1.5)
    with pytest.raises(ValueError, match="shape"):
        long_range_advantages(REWARDS, MASK[:, :3])


def test_whiten_over_valid_tokens_only():
    v = torch.tensor([[1.0, 2.0, 50.0], [3.0, NAN, -7.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # valid values 1, 2, 3: mean 2, population variance 2/3
    sd = math.sqrt(2 / 3 + 1e-8)
    w = whiten(v, m)
    approx(w, [[-1 / sd, 0.0, 0.0], [1 / sd, 0.0, 0.0]])
    v2 = v.clone()
    v2[0, 2], v2[1, 1], v2[1, 2] = -1e9, 123.0, float("inf")
    assert torch.equal(whiten(v2, m), w)
    ws = whiten(v, m, shift_mean=False)
    approx(ws, [[-1 / sd + 2, 2.0, 0.0], [1 / sd + 2, 0.0, 0.0]])


def test_whiten_edge_cases():
    assert whiten(torch.tensor([[4.0, 1.0]]), torch.tensor([[0, 0]])).tolist() == [[0.0, 0.0]]
    one = whiten(torch.tensor([[4.0, 1.0]]), torch.tensor([[1, 0]]))
    assert torch.isfinite(one).all() and one.tolist() == [[0.0, 0.0]]


def _ppo_single(ratio: float, adv: float, clip: float = 0.2, w=None):
    logp_new = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss = ppo_clipped_loss(logp_new, torch.zeros(1, 1), torch.tensor([[adv]]), torch.ones(1, 1), clip=clip,
                            importance_weights=None if w is None else torch.tensor([[w]]))
    loss.backward()
    return loss.item(), logp_new.grad.item()


@pytest.mark.parametrize(
    "ratio,adv,loss,grad",
    [
        (1.1, 1.0, -1.1, -1.1),  # inside band: plain surrogate, d(-A r)/dlogp = -A r
        (0.9, -2.0, 1.8, 1.8),  # inside band, negative advantage
        (1.5, 1.0, -1.2, 0.0),  # A>0, ratio above band: clipped, no gradient
        (0.5, 1.0, -0.5, -0.5),  # A>0, ratio below band: unclipped term is the max
        (0.5, -1.0, 0.8, 0.0),  # A<0, ratio below band: clipped, no gradient
        (1.5, -1.0, 1.5, 1.5),  # A<0, ratio above band: unclipped term is the max
    ],
)
def test_ppo_clip_cases(ratio, adv, loss, grad):
    got_loss, got_grad = _ppo_single(ratio, adv)
    assert got_loss == pytest.approx(loss, abs=1e-6)
    assert got_grad == pytest.approx(grad, abs=1e-6)


def test_ppo_importance_weights_and_clip_width():
    # ratio 1.0 times w 1.5 = 1.5 -> clipped at 1.2 for A>0
    assert _ppo_single(1.0, 1.0, w=1.5)[0] == pytest.approx(-1.2, abs=1e-6)
    assert _ppo_single(1.5, 1.0, clip=0.6)[0] == pytest.approx(-1.5, abs=1e-6)
    with pytest.raises(ValueError, match="clip"):
        _ppo_single(1.0, 1.0, clip=-0.1)


def test_ppo_masked_mean_ignores_padding():
    logp_new = torch.log(torch.tensor([[1.1, 1.5, 1.0], [0.5, 1.0, 1.0]]))
    logp_new[0, 2] = 80.0  # garbage at padding would overflow exp
    logp_old = torch.zeros(2, 3)
    logp_old[1, 2] = NAN
    adv = torch.tensor([[1.0, 1.0, 1e9], [-1.0, 0.0, NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    logp_new.requires_grad_(True)
    loss = ppo_clipped_loss(logp_new, logp_old, adv, mask)
    assert loss.item() == pytest.approx((-1.1 - 1.2 + 0.8) / 3, abs=1e-6)
    loss.backward()
    assert torch.isfinite(logp_new.grad).all()
    assert logp_new.grad[0, 2].item() == 0.0 and logp_new.grad[1, 1].item() == 0.0


def test_sequence_rewards():
    t = torch.tensor([[-1.0, -2.0, NAN]])
    s = torch.tensor([[-0.5, -3.0, 5.0]])
    r = sequence_rewards(t, s, torch.tensor([[1, 1, 0]]))
    assert r.tolist() == [[-0.5, 1.0, 0.0]]
