"""Gradients, not only values: a dropped or added stop-gradient leaves a loss's value unchanged
and breaks the update. Each batch divergence's gradient with respect to the student logits equals
float64 autograd through the formula written out here, and the PPO surrogate's gradient with
respect to the new log-probs equals its closed form (-A * ratio where the unclipped branch is
active, 0 where the clipped one is)."""
from __future__ import annotations

import pytest
import torch

from kdbench import divergences as D
from kdbench.advantages import ppo_clipped_loss


def kl(la, lb):
    return (la.exp() * (la - lb)).sum(-1)


def mix(la, lb, wa):
    return torch.log(wa * la.exp() + (1 - wa) * lb.exp())


FORMULAS = {  # (student log-probs q, teacher log-probs p) -> per-token value
    "forward_kl": (lambda q, p: kl(p, q), {}),
    "reverse_kl": (lambda q, p: kl(q, p), {}),
    "js": (lambda q, p: 0.3 * kl(p, mix(p, q, 0.3)) + 0.7 * kl(q, mix(p, q, 0.3)), {"beta": 0.3}),
    "generalized_jsd": (lambda q, p: 0.6 * kl(p, mix(p, q, 0.6)) + 0.4 * kl(q, mix(p, q, 0.6)), {"beta": 0.6}),
    "tvd": (lambda q, p: 0.5 * (p.exp() - q.exp()).abs().sum(-1), {}),
    "skew_forward_kl": (lambda q, p: kl(p, mix(p, q, 0.2)), {"alpha": 0.2}),
    "skew_reverse_kl": (lambda q, p: kl(q, mix(q, p, 0.2)), {"alpha": 0.2}),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_divergence_gradient_matches_autograd_of_the_formula(name):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 7, generator=g) * 2, torch.randn(2, 4, 7, generator=g) * 2
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]], dtype=torch.float32)
    formula, kw = FORMULAS[name]
    s32 = s.clone().requires_grad_(True)
    D.DIVERGENCES.get(name)(s32, t, mask, **kw).backward()
    s64 = s.double().requires_grad_(True)
    per = formula(torch.log_softmax(s64, -1), torch.log_softmax(t.double(), -1))
    ((per * mask.double()).sum() / mask.sum()).backward()
    assert s32.grad.abs().sum() > 0
    assert torch.allclose(s32.grad.double(), s64.grad, atol=1e-6), name


def test_ppo_gradient_is_minus_advantage_times_ratio_where_unclipped():
    clip = 0.2
    old = torch.zeros(1, 6)
    # ratios exp(new - old) * w: 1.0 (inside), 1.5 (above), 0.5 (below), 1.1, 1.5, 0.5
    new = torch.log(torch.tensor([[1.0, 1.5, 0.5, 1.1, 1.5, 0.5]]))
    adv = torch.tensor([[1.0, 1.0, 1.0, -2.0, -1.0, -1.0]])
    w = torch.ones(1, 6)
    mask = torch.ones(1, 6)
    lp = new.clone().requires_grad_(True)
    ppo_clipped_loss(lp, old, adv, mask, clip, importance_weights=w).backward()
    r = new.exp()
    # A > 0 and r > 1 + clip: the clipped branch wins, no gradient; A > 0, r < 1 - clip: unclipped
    # (-A r > -A (1 - clip)); A < 0 and r > 1 + clip: unclipped; A < 0 and r < 1 - clip: clipped
    active = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    expected = -adv * r * active / 6
    assert torch.allclose(lp.grad, expected, atol=1e-6)


def test_ppo_gradient_carries_the_importance_weight():
    old, mask = torch.zeros(1, 3), torch.ones(1, 3)
    w = torch.tensor([[0.5, 0.9, 1.1]])  # all inside [0.8, 1.2] after x1 except the first
    adv = torch.tensor([[-1.0, 2.0, 0.5]])
    lp = torch.zeros(1, 3, requires_grad=True)
    ppo_clipped_loss(lp, old, adv, mask, 0.2, importance_weights=w).backward()
    # token 0: r = 0.5 < 0.8 with A < 0: the clipped branch (-A * 0.8 = 0.8 > 0.5) wins: 0
    assert torch.allclose(lp.grad, torch.tensor([[0.0, -2.0 * 0.9, -0.5 * 1.1]]) / 3, atol=1e-6)
