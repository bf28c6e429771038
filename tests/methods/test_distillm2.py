"""DistiLLM-2: the skew losses' limits, the detached mixture's gradient, the loss on a fixed batch
against a loop written from the paper's Eq. 2, the alpha curriculum and beta schedule, and a short run."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from kdbench.divergences import forward_kl, reverse_kl
from kdbench.errors import ConfigError
from kdbench.method import make_method
from methods.distillm2 import (curriculum_alpha, distillm2_loss, gradual_beta, response_gap, rows_loss, token_skl,
                               token_srkl)
from toy_kd import gpt2, make_ctx, toy_world

pytestmark = pytest.mark.usefixtures("one_thread")


def _logits(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


def _a(x, n):
    return torch.full((n,), float(x))


def test_alpha_to_zero_gives_forward_and_reverse_kl():
    s, t = _logits(0, 2, 3, 7), _logits(1, 2, 3, 7)
    mask = torch.ones(2, 3)
    a = _a(1e-7, 2)
    assert rows_loss(token_skl, s, t, mask, a).mean() == pytest.approx(float(forward_kl(s, t, mask)), rel=1e-4)
    assert rows_loss(token_srkl, s, t, mask, a).mean() == pytest.approx(float(reverse_kl(s, t, mask)), rel=1e-4)


def test_alpha_one_gives_zero_with_zero_gradient():
    s, t = _logits(2, 5, 6).requires_grad_(), _logits(3, 5, 6)
    for fn in (token_skl, token_srkl):
        v = fn(s, t, _a(1.0, 5))
        assert torch.allclose(v, torch.zeros(5), atol=1e-6)
        (g,) = torch.autograd.grad(v.sum(), s)
        assert torch.allclose(g, torch.zeros_like(g), atol=1e-6)


def test_equal_distributions_give_zero():
    s = _logits(4, 3, 9)
    for fn in (token_skl, token_srkl):
        assert torch.allclose(fn(s, s.clone(), _a(0.1, 3)), torch.zeros(3), atol=1e-6)


def test_minus_infinity_logits_stay_finite():
    s, t = _logits(13, 3, 6).requires_grad_(), _logits(14, 3, 6)
    t[:, 0] = float("-inf")  # a token the teacher bans
    for fn in (token_skl, token_srkl):
        v = fn(s, t, _a(0.1, 3))
        (g,) = torch.autograd.grad(v.sum(), s)
        assert torch.isfinite(v).all() and torch.isfinite(g).all()


def test_srkl_gradient_has_the_student_detached_in_the_mixture():
    # analytic: d/dz_k sum_v q_v (log q_v - log M_v) with M = (1-a) p + a sg(q) is q_k (h_k - sum_v q_v h_v),
    # h = log q - log M. Without the stop-gradient an extra -q a / M term appears.
    a = 0.3
    s, t = _logits(5, 4, 6).requires_grad_(), _logits(6, 4, 6)
    (g,) = torch.autograd.grad(token_srkl(s, t, _a(a, 4)).sum(), s)
    q, p = torch.softmax(s.detach(), -1), torch.softmax(t, -1)
    h = q.log() - ((1 - a) * p + a * q).log()
    expected = q * (h - (q * h).sum(-1, keepdim=True))
    assert torch.allclose(g, expected, atol=1e-5)


def test_skl_gradient_flows_through_the_student_in_the_mixture():
    a = 0.3
    s, t = _logits(7, 4, 6).requires_grad_(), _logits(8, 4, 6)
    (g,) = torch.autograd.grad(token_skl(s, t, _a(a, 4)).sum(), s)
    q, p = torch.softmax(s.detach(), -1), torch.softmax(t, -1)
    d = -p * (1 - a) / (a * p + (1 - a) * q)  # dSKL/dq_v
    expected = q * (d - (q * d).sum(-1, keepdim=True))
    assert torch.allclose(g, expected, atol=1e-5)


def _loop_loss(s, t, mask, role, alpha, beta):
    """Eq. 2 written out with numpy loops: mean over prompts of (1-b) SeqMean SKL(y_t) + b SeqMean SRKL(y_s)."""
    s, t = s.double().numpy(), t.double().numpy()
    total = 0.0
    for b in range(s.shape[0]):
        vals = []
        for i in range(s.shape[1]):
            if mask[b, i] == 0:
                continue
            q = np.exp(s[b, i] - s[b, i].max()); q /= q.sum()
            p = np.exp(t[b, i] - t[b, i].max()); p /= p.sum()
            a = float(alpha[b])
            if role[b]:
                vals.append(np.sum(q * (np.log(q) - np.log((1 - a) * p + a * q))))
            else:
                vals.append(np.sum(p * (np.log(p) - np.log(a * p + (1 - a) * q))))
        total += (beta if role[b] else 1 - beta) * np.mean(vals)
    return total / (s.shape[0] / 2)


def test_step_one_loss_on_a_fixed_batch_matches_a_loop():
    s, t = _logits(9, 4, 5, 8), _logits(10, 4, 5, 8)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float)
    role = torch.tensor([0.0, 0.0, 1.0, 1.0])  # two teacher rows, two student rows
    alpha = torch.tensor([0.1, 0.05, 0.2, 0.01])
    for beta in (0.5, 0.7):
        got = float(distillm2_loss(s, t, mask, role, alpha, beta))
        assert got == pytest.approx(_loop_loss(s, t, mask, role, alpha, beta), rel=1e-5)
    # swapping teacher and student logits changes it (arguments in the right order)
    assert float(distillm2_loss(t, s, mask, role, alpha, 0.5)) != pytest.approx(_loop_loss(s, t, mask, role, alpha, 0.5))


def test_beta_isolates_one_term():
    s, t = _logits(11, 4, 3, 6), _logits(12, 4, 3, 6)
    mask, role, a = torch.ones(4, 3), torch.tensor([0.0, 0.0, 1.0, 1.0]), _a(0.1, 4)
    skl = rows_loss(token_skl, s, t, mask, a)[:2].sum()
    srkl = rows_loss(token_srkl, s, t, mask, a)[2:].sum()
    assert float(distillm2_loss(s, t, mask, role, a, 0.0)) == pytest.approx(float(skl) / 2, rel=1e-6)
    assert float(distillm2_loss(s, t, mask, role, a, 1.0)) == pytest.approx(float(srkl) / 2, rel=1e-6)


@pytest.mark.parametrize("gap_over_mean, expected", [(1.0, 0.1), (2.0, 0.1), (0.5, 0.01), (-0.3, 0.1)])
def test_curriculum_alpha(gap_over_mean, expected):
    m = 0.2
    got = float(curriculum_alpha(torch.tensor([gap_over_mean * m]), m, 0.1)[0])
    assert got == pytest.approx(expected, abs=1e-3)


def test_gradual_beta_rises_from_half_to_three_quarters_over_half_the_run():
    assert gradual_beta(0, 100) == 0.5
    assert gradual_beta(25, 100) == pytest.approx(0.625)
    assert gradual_beta(50, 100) == gradual_beta(90, 100) == 0.75


def test_response_gap_signs():
    # one-token responses: teacher row gap = p(y) - q(y), student row gap = q(y) - p(y)
    s, t = torch.zeros(2, 1, 2), torch.tensor([[[2.0, 0.0]], [[2.0, 0.0]]])
    labels, mask = torch.tensor([[0], [0]]), torch.ones(2, 1)
    g = response_gap(s, t, labels, mask, torch.tensor([0.0, 1.0]))
    p0 = math.exp(2) / (math.exp(2) + 1)
    assert g.tolist() == pytest.approx([p0 - 0.5, 0.5 - p0], abs=1e-6)


def test_config_defaults_and_validation():
    c = make_method("distillm2").config
    assert (c.alpha, c.beta, c.update_alpha, c.gradual_beta) == (0.1, 0.5, False, False)
    assert make_method("distillm2").student_init == "sft" and make_method("distillm2").budget == "on_policy"
    with pytest.raises(ConfigError, match="method_config.distillm2.alpha"):
        make_method("distillm2", {"alpha": 0.0})


@pytest.mark.parametrize("schedules", [{}, {"update_alpha": True, "gradual_beta": True}])
def test_distillm2_trains_on_teacher_and_student_responses(tmp_path, schedules):
    w = toy_world()
    teacher = gpt2(w.tok, seed=7, std=0.5).eval()
    samples = [dataclasses.replace(ex, meta={**ex.meta, "target": ex.references[0]}) for ex in w.exs]
    ctx = make_ctx(w.tok, w.exs, teacher, tmp_path, steps=10, teacher_samples=samples)
    method = make_method("distillm2", schedules)
    method.train(ctx)
    h = ctx.history
    assert len(h) == 10 and all(math.isfinite(r["loss"]) for r in h)
    assert ctx.counters["generated_tokens"] > 0  # student responses sampled
    if schedules:  # 64 examples / batch 8 = 8 steps per epoch: the curriculum starts in epoch 2
        assert h[-1]["beta"] > 0.5 and "alpha" in h[-1]
        assert h[-1]["alpha"] <= 0.1
