"""ABKD's alpha-beta divergence and AKL's adaptive KL against closed forms, limits and hand values
(sota-methods.md §3f, §4f). Expected numbers use plain-python maths, never kdbench.divergences."""
from __future__ import annotations

import math

import pytest
import torch

from kdbench import divergences as D

P = [0.5, 0.3, 0.2]  # teacher
Q = [0.2, 0.5, 0.3]  # student


def logits(*rows: list[float]) -> torch.Tensor:
    return torch.tensor([[[math.log(x) for x in r] for r in rows]], dtype=torch.float32)


def ab(a: float, b: float, p=P, q=Q) -> float:
    return D.alpha_beta(logits(q), logits(p), torch.ones(1, 1), alpha=a, beta=b).item()


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def ab_general(a, b, p=P, q=Q):
    """Cichocki's formula, a, b, a + b != 0."""
    return -1 / (a * b) * sum(x**a * y**b - a / (a + b) * x ** (a + b) - b / (a + b) * y ** (a + b)
                              for x, y in zip(p, q))


# --- alpha-beta --------------------------------------------------------------------------------------

@pytest.mark.parametrize("a,b", [(0.2, 0.7), (0.5, 0.5), (1.0, 1.0), (0.3, 0.2), (0.9, 0.05), (0.4, -0.2),
                                 (-0.3, 0.8)])
def test_alpha_beta_general_formula(a, b):
    assert ab(a, b) == pytest.approx(ab_general(a, b), rel=1e-5)


def test_alpha_beta_named_members_of_the_family():
    fkl, rkl = kl(P, Q), kl(Q, P)
    assert ab(1.0, 0.0) == pytest.approx(fkl, rel=1e-6)
    assert ab(0.0, 1.0) == pytest.approx(rkl, rel=1e-6)
    assert ab(1.0, 1e-4) == pytest.approx(fkl, rel=1e-3)
    assert ab(1e-4, 1.0) == pytest.approx(rkl, rel=1e-3)
    assert ab(0.5, 0.5) == pytest.approx(2 * sum((math.sqrt(p) - math.sqrt(q)) ** 2 for p, q in zip(P, Q)), rel=1e-5)
    assert ab(1.0, 1.0) == pytest.approx(0.5 * sum((p - q) ** 2 for p, q in zip(P, Q)), rel=1e-5)
    a = 0.3  # alpha + beta = 1: (1 - sum p^a q^(1-a)) / (a (1 - a))
    assert ab(a, 1 - a) == pytest.approx((1 - sum(p**a * q ** (1 - a) for p, q in zip(P, Q))) / (a * (1 - a)), rel=1e-5)
    assert fkl != pytest.approx(rkl, rel=1e-2)  # the table distinguishes swapped arguments


def test_alpha_beta_limits_use_one_over_alpha_squared():
    # beta -> 0: (1/a^2) sum [p^a log(p^a/q^a) - p^a + q^a]; the official code has 1/a (half this at a = 0.5)
    a = 0.5
    beta0 = sum(p**a * math.log(p**a / q**a) - p**a + q**a for p, q in zip(P, Q)) / a**2
    assert ab(a, 0.0) == pytest.approx(beta0, rel=1e-5)
    b = 0.6  # alpha -> 0: (1/b^2) sum [q^b log(q^b/p^b) - q^b + p^b]
    alpha0 = sum(q**b * math.log(q**b / p**b) - q**b + p**b for p, q in zip(P, Q)) / b**2
    assert ab(0.0, b) == pytest.approx(alpha0, rel=1e-5)
    a = 0.4  # alpha = -beta: (1/a^2) sum [log(q^a/p^a) + p^a/q^a - 1]
    anti = sum(math.log(q**a / p**a) + p**a / q**a - 1 for p, q in zip(P, Q)) / a**2
    assert ab(a, -a) == pytest.approx(anti, rel=1e-5)
    assert ab(0.0, 0.0) == pytest.approx(0.5 * sum((math.log(p) - math.log(q)) ** 2 for p, q in zip(P, Q)), rel=1e-5)


@pytest.mark.parametrize("a,b", [(0.5, 0.0), (0.0, 0.6), (0.4, -0.4), (0.0, 0.0), (1.0, 0.0)])
@pytest.mark.parametrize("eps", [1e-3, -2e-3, 2e-2])
def test_alpha_beta_is_continuous_across_the_special_lines(a, b, eps):
    # the general formula (computed here in float64) converges to the limit; ours is continuous there
    a2, b2 = (a + eps, b + 2 * eps) if a == b == 0.0 else (a + eps, b) if (a == 0.0 or a + b == 0.0) else (a, b + eps)
    near, exact = ab(a2, b2), ab_general(a2, b2)
    assert near == pytest.approx(exact, rel=2e-4)
    assert near == pytest.approx(ab(a, b), rel=0.1)


def test_alpha_beta_zero_on_equal_and_positive_elsewhere():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 6, 9, generator=g) * 3, torch.randn(4, 6, 9, generator=g) * 3
    m = torch.ones(4, 6)
    for a, b in [(0.2, 0.7), (0.0, 0.0), (1.0, 0.0), (0.5, 0.5), (0.4, -0.4), (0.7, -0.2)]:
        assert D.alpha_beta(s, s.clone(), m, alpha=a, beta=b).abs().item() < 1e-6
        assert bool((D.token_alpha_beta(s, t, a, b) > 0).all())


def test_alpha_beta_gradient_limits_are_fkl_and_rkl():
    # d FKL / d z_s = q - p; d RKL / d z_s = q * (log q - log p - RKL)
    for (a, b), want in [((1.0, 1e-6), [q - p for p, q in zip(P, Q)]),
                         ((1e-6, 1.0), [q * (math.log(q / p) - kl(Q, P)) for p, q in zip(P, Q)])]:
        s = logits(Q).requires_grad_(True)
        D.alpha_beta(s, logits(P), torch.ones(1, 1), alpha=a, beta=b).backward()
        assert s.grad[0, 0].tolist() == pytest.approx(want, abs=1e-5)


def test_alpha_beta_rejects_non_finite_parameters():
    with pytest.raises(ValueError, match="alpha and beta"):
        ab(float("nan"), 0.5)


# --- AKL -----------------------------------------------------------------------------------------

def akl(p, q, mu=0.5):
    return D.akl(logits(q), logits(p), torch.ones(1, 1), mu=mu).item()


def test_akl_reference_cases():
    p = [0.6, 0.3, 0.1]
    q = [0.6, 0.1, 0.3]  # head = top-1 with no error: weights (0, 1), AKL = RKL
    assert akl(p, q) == pytest.approx(kl(q, p), rel=1e-5)
    q = [0.4, 0.4, 0.2]  # g_H = 0.2, g_T = 0.1 + 0.1: weights (0.5, 0.5)
    assert akl(p, q) == pytest.approx(0.5 * kl(p, q) + 0.5 * kl(q, p), rel=1e-5)


def test_akl_mu_moves_the_crossing_token():
    p, q = [0.4, 0.35, 0.25], [0.2, 0.5, 0.3]
    # mu 0.5: the token crossing 0.5 (cum 0.75) is tail: g_H = 0.2, g_T = 0.15 + 0.05 -> 1/2
    assert akl(p, q, mu=0.5) == pytest.approx(0.5 * kl(p, q) + 0.5 * kl(q, p), rel=1e-5)
    # mu 0.8: head {0, 1}: g_H = 0.35, g_T = 0.05 -> w_F = 0.875
    assert akl(p, q, mu=0.8) == pytest.approx(0.875 * kl(p, q) + 0.125 * kl(q, p), rel=1e-5)


def test_akl_one_token_head_weights_forward_kl_at_most_half():
    # with a top-1 head, |p1 - q1| <= sum over the tail of |p - q| (the masses balance)
    g = torch.Generator().manual_seed(3)
    t = torch.randn(200, 7, generator=g) * 3
    t[:, 0] += 6  # top-1 above 1/2 of the mass almost everywhere: a one-token head
    s = torch.randn(200, 7, generator=g) * 3
    p = t.softmax(-1)
    one = p.max(-1).values > 0.5
    fkl, rkl, val = D.token_forward_kl(s, t), D.token_reverse_kl(s, t), D.token_akl(s, t)
    w = (val - rkl) / (fkl - rkl)  # the weight of FKL, read back from the value
    assert one.sum() > 100
    assert bool((w[one] <= 0.5 + 1e-4).all())
    assert bool(((val >= torch.minimum(fkl, rkl) - 1e-6) & (val <= torch.maximum(fkl, rkl) + 1e-6)).all())


def test_akl_weights_carry_no_gradient():
    g = torch.Generator().manual_seed(5)
    s = (torch.randn(1, 4, 6, generator=g) * 2).requires_grad_(True)
    t = torch.randn(1, 4, 6, generator=g) * 2
    m = torch.ones(1, 4)
    D.akl(s, t, m).backward()
    # the same loss with the weights as constants: w FKL + (1 - w) RKL
    fkl, rkl = D.token_forward_kl(s, t).detach(), D.token_reverse_kl(s, t).detach()
    w = ((D.token_akl(s, t).detach() - rkl) / (fkl - rkl))
    s2 = s.detach().clone().requires_grad_(True)
    (w * D.token_forward_kl(s2, t) + (1 - w) * D.token_reverse_kl(s2, t)).mean().backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-5, atol=1e-7)


def test_akl_equal_distributions_are_zero_not_nan():
    s = logits(P).requires_grad_(True)
    out = D.akl(s, logits(P), torch.ones(1, 1))
    assert out.item() == 0.0
    out.backward()
    assert torch.isfinite(s.grad).all()
    with pytest.raises(ValueError, match="mu"):
        akl(P, Q, mu=1.5)


def test_alpha_beta_survives_near_zero_probabilities():
    # log-probs of -140 / -150: expm1(u) alone would overflow fp32 at the FKL / RKL ends
    s, t, m = torch.tensor([[[0.0, -140.0, -5.0]]]), torch.tensor([[[0.0, -5.0, -150.0]]]), torch.ones(1, 1)
    for (a, b), ref in [((1.0, 0.0), D.forward_kl(s, t, m)), ((0.0, 1.0), D.reverse_kl(s, t, m)),
                        ((1.0, 1e-3), None), ((0.2, 0.7), None)]:  # (1, 1e-3): q^0.001 = 0.87 here, not ~1
        x = s.clone().requires_grad_(True)
        out = D.alpha_beta(x, t, m, alpha=a, beta=b)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(x.grad).all()
        if ref is not None:
            assert out.item() == pytest.approx(ref.item(), rel=2e-3)
