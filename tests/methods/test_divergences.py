"""Divergences against closed-form and hand-computed values (expected numbers use plain math)."""
from __future__ import annotations

import math

import pytest
import torch

from kdbench import divergences as D
from kdbench.errors import UnknownNameError

LN2 = math.log(2.0)
NEG = float("-inf")

# (name, kwargs) covering every divergence and non-default parameters
ALL = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("js", {}),
    ("js", {"beta": 0.1}),
    ("generalized_jsd", {}),
    ("generalized_jsd", {"beta": 0.0}),
    ("generalized_jsd", {"beta": 1.0}),
    ("generalized_jsd", {"beta": 0.9}),
    ("tvd", {}),
    ("skew_forward_kl", {}),
    ("skew_forward_kl", {"alpha": 0.0}),
    ("skew_reverse_kl", {}),
    ("skew_reverse_kl", {"alpha": 0.5}),
    ("alpha_beta", {}),
    ("alpha_beta", {"alpha": 0.2, "beta": 0.7}),
    ("alpha_beta", {"alpha": 1.0, "beta": 0.0}),
    ("alpha_beta", {"alpha": 0.0, "beta": 0.0}),
    ("alpha_beta", {"alpha": 0.4, "beta": -0.4}),
    ("akl", {}),
    ("akl", {"mu": 0.8}),
]
IDS = [f"{n}-{kw}" for n, kw in ALL]


def kl(a: list[float], b: list[float]) -> float:
    """Plain-python KL(a||b) with 0*log0 = 0."""
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def mix(a: list[float], b: list[float], w: float) -> list[float]:
    return [w * x + (1 - w) * y for x, y in zip(a, b)]


def logits(*rows: list[float]) -> torch.Tensor:
    """[1, T, V] logits from probability rows (log of a probability is a valid logit)."""
    return torch.tensor([[[math.log(x) if x > 0 else NEG for x in r] for r in rows]], dtype=torch.float32)


def ones(*shape: int) -> torch.Tensor:
    return torch.ones(*shape)


P = [0.5, 0.3, 0.2]  # teacher
Q = [0.2, 0.5, 0.3]  # student


@pytest.fixture
def rand():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 5, generator=g) * 2
    t = torch.randn(2, 3, 5, generator=g) * 2
    return s, t


@pytest.mark.parametrize("name,kw", ALL, ids=IDS)
def test_equal_inputs_give_zero(name, kw, rand):
    s, _ = rand
    out = D.get_divergence(name)(s, s.clone(), ones(2, 3), **kw)
    assert out.dtype == torch.float32 and out.dim() == 0
    assert abs(out.item()) < 1e-6


@pytest.mark.parametrize(
    "name,kw,expected",
    [
        ("forward_kl", {}, kl(P, Q)),
        ("reverse_kl", {}, kl(Q, P)),
        ("js", {}, 0.5 * kl(P, mix(P, Q, 0.5)) + 0.5 * kl(Q, mix(P, Q, 0.5))),
        ("js", {"beta": 0.3}, 0.3 * kl(P, mix(P, Q, 0.3)) + 0.7 * kl(Q, mix(P, Q, 0.3))),
        # GKD: M = (1-beta) q + beta p; beta KL(p||M) + (1-beta) KL(q||M)
        ("generalized_jsd", {"beta": 0.3}, 0.3 * kl(P, mix(Q, P, 0.7)) + 0.7 * kl(Q, mix(Q, P, 0.7))),
        ("tvd", {}, 0.5 * (0.3 + 0.2 + 0.1)),
        ("skew_forward_kl", {}, kl(P, mix(P, Q, 0.1))),
        ("skew_forward_kl", {"alpha": 0.4}, kl(P, mix(P, Q, 0.4))),
        ("skew_reverse_kl", {}, kl(Q, mix(Q, P, 0.1))),
        ("skew_reverse_kl", {"alpha": 0.4}, kl(Q, mix(Q, P, 0.4))),
    ],
)
def test_hand_computed_three_token_vocab(name, kw, expected):
    out = D.get_divergence(name)(logits(Q), logits(P), ones(1, 1), **kw)
    assert out.item() == pytest.approx(expected, abs=1e-6)


def test_hand_values_are_not_trivial():
    # guard against a test table that compares zeros with zeros
    assert kl(P, Q) == pytest.approx(0.5 * math.log(2.5) + 0.3 * math.log(0.6) + 0.2 * math.log(2 / 3))
    assert kl(P, Q) > 0.1


def test_two_token_closed_form():
    # p = (0.9, 0.1), q = (0.6, 0.4)
    p, q = [0.9, 0.1], [0.6, 0.4]
    s, t, m = logits(q), logits(p), ones(1, 1)
    fkl = 0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)
    rkl = 0.6 * math.log(0.6 / 0.9) + 0.4 * math.log(0.4 / 0.1)
    assert D.forward_kl(s, t, m).item() == pytest.approx(fkl, abs=1e-6)
    assert D.reverse_kl(s, t, m).item() == pytest.approx(rkl, abs=1e-6)
    assert D.tvd(s, t, m).item() == pytest.approx(0.3, abs=1e-6)


def test_js_bounded_by_ln2_and_symmetric(rand):
    s, t = rand
    m = ones(2, 3)
    v = D.js(s, t, m).item()
    assert 0 < v <= LN2
    assert D.js(t, s, m).item() == pytest.approx(v, abs=1e-6)
    assert D.tvd(t, s, m).item() == pytest.approx(D.tvd(s, t, m).item(), abs=1e-6)


def test_disjoint_supports_reach_the_bounds():
    s = logits([0.0, 0.5, 0.5])
    t = logits([1.0, 0.0, 0.0])
    m = ones(1, 1)
    assert D.js(s, t, m).item() == pytest.approx(LN2, abs=1e-6)
    assert D.generalized_jsd(s, t, m, beta=0.5).item() == pytest.approx(LN2, abs=1e-6)
    assert D.tvd(s, t, m).item() == pytest.approx(1.0, abs=1e-6)


def test_tvd_in_unit_interval(rand):
    s, t = rand
    tok = D.token_tvd(s * 5, t * 5)
    assert tok.shape == (2, 3)
    assert bool(((tok >= 0) & (tok <= 1)).all())


def test_skew_endpoints(rand):
    s, t = rand
    m = ones(2, 3)
    assert D.skew_forward_kl(s, t, m, alpha=0.0).item() == pytest.approx(D.forward_kl(s, t, m).item(), abs=1e-6)
    assert D.skew_reverse_kl(s, t, m, alpha=0.0).item() == pytest.approx(D.reverse_kl(s, t, m).item(), abs=1e-6)
    assert abs(D.skew_forward_kl(s, t, m, alpha=1.0).item()) < 1e-7
    assert abs(D.skew_reverse_kl(s, t, m, alpha=1.0).item()) < 1e-7
    for fn in (D.skew_forward_kl, D.skew_reverse_kl):  # alpha = 1: a zero that backward accepts
        x = s.clone().requires_grad_(True)
        fn(x, t, m, alpha=1.0).backward()
        assert x.grad is not None and float(x.grad.abs().max()) < 1e-6


def test_skew_forward_kl_is_distillm_logged_value_minus_teacher_entropy():
    # DistiLLM's sfkl logs the cross-entropy -sum p log(a p + (1-a) q); ours is KL = that - H(p)
    ce = -sum(x * math.log(y) for x, y in zip(P, mix(P, Q, 0.1)))
    entropy = -sum(x * math.log(x) for x in P)
    ours = D.skew_forward_kl(logits(Q), logits(P), ones(1, 1), alpha=0.1).item()
    assert ours == pytest.approx(ce - entropy, abs=1e-6) and entropy > 1.0


def test_distillm_refuses_skew_alpha_one():
    from kdbench.errors import ConfigError
    from kdbench.method import make_method
    from kdbench.plugins import load_plugins

    load_plugins()
    with pytest.raises(ConfigError, match=r"skew_alpha': must be in \[0, 1\)"):
        make_method("distillm", {"skew_alpha": 1.0})
    assert make_method("distillm", {"skew_alpha": 0.0}).config.skew_alpha == 0.0


def test_generalized_jsd_endpoints_and_relation_to_js(rand):
    s, t = rand
    m = ones(2, 3)
    assert D.generalized_jsd(s, t, m, beta=0.0).item() == pytest.approx(D.forward_kl(s, t, m).item(), abs=1e-6)
    assert D.generalized_jsd(s, t, m, beta=1.0).item() == pytest.approx(D.reverse_kl(s, t, m).item(), abs=1e-6)
    for beta in (0.1, 0.5, 0.9):
        assert D.generalized_jsd(s, t, m, beta=beta).item() == pytest.approx(D.js(s, t, m, beta=beta).item(), abs=1e-6)
    # js itself is 0 at the endpoints (the mixture equals one side)
    assert D.js(s, t, m, beta=0.0).item() == 0.0
    assert D.js(s, t, m, beta=1.0).item() == 0.0


def test_token_level_values():
    s, t = logits(Q, P), logits(P, Q)
    assert D.token_forward_kl(s, t)[0].tolist() == pytest.approx([kl(P, Q), kl(Q, P)], abs=1e-6)
    assert D.token_reverse_kl(s, t)[0].tolist() == pytest.approx([kl(Q, P), kl(P, Q)], abs=1e-6)


@pytest.mark.parametrize("name,kw", ALL, ids=IDS)
def test_masked_positions_are_ignored(name, kw, rand):
    s, t = rand
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    f = D.get_divergence(name)
    ref = f(s, t, mask, **kw)
    s2, t2 = s.clone(), t.clone()
    s2[mask == 0] = 1e4 * torch.randn_like(s2[mask == 0])
    t2[mask == 0] = -1e4
    s2[0, 2, 0] = 3e4
    assert f(s2, t2, mask, **kw).item() == pytest.approx(ref.item(), abs=1e-6)
    # non-finite garbage in the forward pass too
    s3, t3 = s.clone(), t.clone()
    s3[1, 1] = float("nan")
    t3[1, 2] = float("inf")
    assert f(s3, t3, mask, **kw).item() == pytest.approx(ref.item(), abs=1e-6)
    # finite garbage gets zero gradient
    s2.requires_grad_(True)
    f(s2, t2, mask, **kw).backward()
    assert torch.isfinite(s2.grad).all()
    assert bool((s2.grad[mask == 0] == 0).all())


@pytest.mark.parametrize("name,kw", ALL, ids=IDS)
def test_batch_loss_is_the_weighted_mean_of_token_values(name, kw, rand):
    # the batch losses only evaluate masked-in rows; that must not change the value or the weights
    s, t = rand
    mask = torch.tensor([[1.0, 0.5, 0.0], [0.0, 2.0, 1.0]])
    token = getattr(D, "token_" + name)(s, t, **kw)
    expected = (token * mask).sum() / mask.sum()
    assert D.get_divergence(name)(s, t, mask, **kw).item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-7)


def test_batch_average_is_per_token():
    # row 0: three valid tokens (p,q), (q,p), (p,p); row 1: one valid token (p,q), then padding
    s = torch.cat([logits(Q, P, P), logits(Q, [0.1, 0.1, 0.8], [0.1, 0.1, 0.8])])
    t = torch.cat([logits(P, Q, P), logits(P, [0.8, 0.1, 0.1], [0.8, 0.1, 0.1])])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    expected = (kl(P, Q) + kl(Q, P) + 0.0 + kl(P, Q)) / 4  # not the mean of row means
    row_means = ((kl(P, Q) + kl(Q, P)) / 3 + kl(P, Q)) / 2
    got = D.forward_kl(s, t, mask).item()
    assert got == pytest.approx(expected, abs=1e-6)
    assert abs(got - row_means) > 1e-3
    bool_mask = mask.bool()
    assert D.forward_kl(s, t, bool_mask).item() == pytest.approx(expected, abs=1e-6)


def test_empty_mask_gives_zero_with_graph(rand):
    s, t = rand
    s = s.clone().requires_grad_(True)
    out = D.reverse_kl(s, t, torch.zeros(2, 3))
    assert out.item() == 0.0 and not torch.isnan(out)
    out.backward()
    assert bool((s.grad == 0).all())
    v = torch.zeros(2, 3, requires_grad=True)
    D.masked_mean(v, torch.zeros(2, 3)).backward()
    assert v.grad is not None


def test_masked_mean_weights():
    v = torch.tensor([[1.0, 2.0, float("inf")], [4.0, float("nan"), 0.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert D.masked_mean(v, m).item() == pytest.approx(7 / 3)


@pytest.mark.parametrize("name,kw", ALL, ids=IDS)
def test_neg_inf_logits_give_finite_values_and_grads(name, kw):
    # student bans token 0 everywhere; teacher bans token 0 (shared) at position 0,
    # token 1 (teacher only) at position 1, and tokens 0 and 3 at position 2
    g = torch.Generator().manual_seed(1)
    s = torch.randn(1, 3, 4, generator=g)
    t = torch.randn(1, 3, 4, generator=g)
    s[..., 0] = NEG
    t[0, 0, 0] = NEG
    t[0, 1, 1] = NEG
    t[0, 2, 0] = NEG
    t[0, 2, 3] = NEG
    s.requires_grad_(True)
    t.requires_grad_(True)
    out = D.get_divergence(name)(s, t, ones(1, 3), **kw)
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()
    assert bool((s.grad[..., 0] == 0).all())  # a -inf logit gets no gradient


def test_shared_neg_inf_entry_hand_value():
    # both models ban token 0; the divergence is exact on the remaining support
    p, q = [0.0, 0.5, 0.5], [0.0, 0.25, 0.75]
    s, t, m = logits(q), logits(p), ones(1, 1)
    assert D.forward_kl(s, t, m).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75), abs=1e-6)
    assert D.reverse_kl(s, t, m).item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6)
    assert D.js(s, t, m).item() == pytest.approx(0.5 * kl(p, mix(p, q, 0.5)) + 0.5 * kl(q, mix(p, q, 0.5)), abs=1e-6)
    assert D.tvd(s, t, m).item() == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,kw", ALL, ids=IDS)
def test_low_precision_inputs_give_fp32_answer(name, kw, dtype, rand):
    s, t = rand
    s, t = s.to(dtype), t.to(dtype)
    f = D.get_divergence(name)
    out = f(s, t, ones(2, 3), **kw)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(f(s.float(), t.float(), ones(2, 3), **kw).item(), rel=1e-6, abs=1e-7)


def test_gradient_matches_closed_form_for_forward_kl():
    # d KL(p||q) / d student_logits = q - p (per token; one token so no averaging factor)
    s = logits(Q).requires_grad_(True)
    D.forward_kl(s, logits(P), ones(1, 1)).backward()
    assert s.grad[0, 0].tolist() == pytest.approx([q - p for p, q in zip(P, Q)], abs=1e-6)


def test_registry_and_validation(rand):
    s, t = rand
    assert set(D.DIVERGENCES) == {
        "forward_kl", "reverse_kl", "js", "generalized_jsd", "tvd", "skew_forward_kl", "skew_reverse_kl", "alpha_beta",
        "akl"}
    assert D.get_divergence("tvd") is D.tvd
    with pytest.raises(UnknownNameError) as e:
        D.get_divergence("forward_kld")
    msg = str(e.value)
    assert "reverse_kl" in msg and "Did you mean 'forward_kl'" in msg
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            D.js(s, t, ones(2, 3), beta=bad)
        with pytest.raises(ValueError, match="beta"):
            D.generalized_jsd(s, t, ones(2, 3), beta=bad)
        with pytest.raises(ValueError, match="alpha"):
            D.skew_forward_kl(s, t, ones(2, 3), alpha=bad)
        with pytest.raises(ValueError, match="alpha"):
            D.skew_reverse_kl(s, t, ones(2, 3), alpha=bad)
    with pytest.raises(ValueError, match="vocabulary"):
        D.forward_kl(s, t[..., :4], ones(2, 3))
    with pytest.raises(ValueError, match="mask shape"):
        D.forward_kl(s, t, ones(3, 2))


@pytest.mark.parametrize("name,kw", ALL, ids=IDS)
def test_unguarded_path_equals_the_guarded_one_bitwise(name, kw, rand, monkeypatch):
    """Without a probability of exactly 0 the -inf guards are skipped (divergences.positive): values and
    gradients must be bitwise those of the guarded forms, which the same inputs take when it is forced."""
    def run():
        s, t = (x.clone().requires_grad_(True) for x in rand)
        out = D.get_divergence(name)(s, t, ones(2, 3), **kw)
        out.backward()
        return out.detach(), s.grad, t.grad

    assert D.positive(*(torch.log_softmax(x, -1) for x in rand))
    fast = run()
    monkeypatch.setattr(D, "positive", lambda *a: False)
    guarded = run()
    for a, b in zip(fast, guarded):
        assert torch.equal(a, b)
    assert not D.positive(torch.tensor([0.0, NEG]))
