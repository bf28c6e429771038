"""Speculative KD: the per-sequence loss on a fixed batch against a numpy loop, the divergence choice,
config validation, and a short run whose rollouts come from the speculative sampler."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdbench.divergences import forward_kl
from kdbench.errors import ConfigError
from kdbench.method import make_method
from methods.skd import TOKEN_DIVERGENCES, sequence_mean_divergence
from toy_kd import gpt2, make_ctx, toy_world

pytestmark = pytest.mark.usefixtures("one_thread")


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _loop(s, t, mask, kind):
    """mean over rows of the row's token-mean D, with D written from its definition."""
    s, t = s.double().numpy(), t.double().numpy()
    rows = []
    for b in range(s.shape[0]):
        vals = []
        for i in range(s.shape[1]):
            if mask[b, i]:
                q, p = _softmax(s[b, i]), _softmax(t[b, i])
                if kind == "fkl":
                    vals.append(np.sum(p * np.log(p / q)))
                elif kind == "rkl":
                    vals.append(np.sum(q * np.log(q / p)))
                else:
                    m = 0.5 * (p + q)
                    vals.append(0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m)))
        rows.append(np.mean(vals))
    return float(np.mean(rows))


@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd"])
def test_loss_on_a_fixed_batch_matches_a_loop(kind):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 7, generator=g) * 2, torch.randn(3, 5, 7, generator=g) * 2
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.float)
    got = float(sequence_mean_divergence(TOKEN_DIVERGENCES[kind], s, t, mask))
    assert got == pytest.approx(_loop(s, t, mask, kind), rel=1e-5)
    if kind != "jsd":  # swapped arguments give the other KL
        assert float(sequence_mean_divergence(TOKEN_DIVERGENCES[kind], t, s, mask)) != pytest.approx(got, rel=1e-3)


def test_one_sequence_equals_masked_forward_kl():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(1, 6, 5, generator=g), torch.randn(1, 6, 5, generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0]], dtype=torch.float)
    assert float(sequence_mean_divergence(TOKEN_DIVERGENCES["fkl"], s, t, mask)) == \
        pytest.approx(float(forward_kl(s, t, mask)), rel=1e-6)


def test_config_defaults_and_validation():
    c = make_method("skd").config
    assert (c.topk, c.divergence) == (25, "fkl")
    with pytest.raises(ConfigError, match="method_config.skd.divergence"):
        make_method("skd", {"divergence": "kl"})
    with pytest.raises(ConfigError, match="method_config.skd.topk"):
        make_method("skd", {"topk": 0})


def test_skd_trains_on_speculative_rollouts(tmp_path):
    w = toy_world()
    teacher = gpt2(w.tok, seed=7, std=0.5).eval()
    ctx = make_ctx(w.tok, w.exs, teacher, tmp_path, steps=8)
    make_method("skd", {"topk": 3}).train(ctx)
    h = ctx.history
    assert len(h) == 8 and all(math.isfinite(r["loss"]) for r in h)
    # a near-uniform student proposing over ~100 words is mostly outside the teacher's top-3
    assert all(0.0 <= r["accept"] < 0.5 for r in h)
    assert ctx.counters["teacher_forward_tokens"] > 0
    assert h[-1]["fkl"] < h[0]["fkl"]


def test_topk_reaches_the_sampler(tmp_path):
    w = toy_world()
    teacher = gpt2(w.tok, seed=7, std=0.5).eval()
    accept = {}
    for k in (1, len(w.tok)):
        ctx = make_ctx(w.tok, w.exs, teacher, tmp_path / str(k), steps=1, lr=1e-6)
        make_method("skd", {"topk": k}).train(ctx)
        accept[k] = ctx.history[0]["accept"]
    assert accept[len(w.tok)] == 1.0 and accept[1] < 0.2


def test_step_one_loss_uses_the_configured_divergence_and_k(tmp_path):
    """The first logged loss equals the chosen divergence on the rollout the speculative sampler draws
    from the initial student with the step's seed (K and the divergence reach the loss)."""
    import copy

    from kdbench.data import collate
    from kdbench.divergences import token_reverse_kl
    from kdbench.row_sampling import sample_rows
    from kdbench.sampling import SamplingConfig
    from toy_kd import NEW

    w = toy_world()
    teacher = gpt2(w.tok, seed=7, std=0.5).eval()
    student = gpt2(w.tok, seed=3, std=0.3)
    s0 = copy.deepcopy(student).eval()
    ctx = make_ctx(w.tok, w.exs, teacher, tmp_path, steps=1, lr=1e-9, student=student)
    exs = next(ctx.example_batches())
    make_method("skd", {"topk": 5, "divergence": "rkl"}).train(ctx)
    ro, _ = sample_rows(s0, ctx.prompt_ids(exs), SamplingConfig(max_new_tokens=NEW), w.tok.eos_token_id,
                        w.tok.pad_token_id, seed=ctx.step_seed(0), batch_size=len(exs), mix_model=teacher, skd_topk=5)
    b = collate(list(zip(ro.prompt_ids, ro.response_ids)), w.tok.pad_token_id)
    with torch.no_grad():
        expected = sequence_mean_divergence(token_reverse_kl, s0(input_ids=b.input_ids, attention_mask=b.attention_mask).logits,
                                            teacher(input_ids=b.input_ids, attention_mask=b.attention_mask).logits,
                                            b.loss_mask)
    assert ctx.history[0]["rkl"] == pytest.approx(float(expected), rel=1e-4)
    replaced = sum(f for r in ro.replaced for f in r) / sum(len(r) for r in ro.replaced)
    assert ctx.history[0]["accept"] == pytest.approx(1 - replaced, abs=1e-6)
