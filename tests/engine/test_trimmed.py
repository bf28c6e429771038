"""Trimmed no-grad forwards (kdbench.hidden.trimmed): rows grouped by length, each group cut to its longest
row. The grouping is the optimum of its cost; the outputs on real positions are the one-call forward's;
the teacher's forward in a MethodContext runs trimmed and gives the same losses."""
from __future__ import annotations

import itertools
import random

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from kdbench import hidden
from kdbench.data import collate
from kdbench.hidden import call_cost_tokens, dense_logits, forward_logits, length_groups, trimmed

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, EOS, V = 0, 1, 30


def _cost(groups, lengths, c):
    return sum(len(g) * max(lengths[i] for i in g) + c for g in groups)


def _brute(lengths, c):
    """The cheapest cut of the length-sorted rows into consecutive runs, by trying every cut."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = None
    for k in range(len(order)):
        for cuts in itertools.combinations(range(1, len(order)), k):
            bounds = (0, *cuts, len(order))
            groups = [order[a:b] for a, b in zip(bounds, bounds[1:])]
            cost = _cost(groups, lengths, c)
            best = cost if best is None else min(best, cost)
    return best


def test_length_groups_is_the_cheapest_cut():
    rng = random.Random(0)
    for _ in range(60):
        lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 8))]
        c = rng.choice([0.0, 3.0, 20.0, 1e9])
        groups = length_groups(lengths, c)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every row once
        assert _cost(groups, lengths, c) == pytest.approx(_brute(lengths, c))
    assert len(length_groups([5, 100, 7, 99], 1e9)) == 1  # a call dearer than any padding: one group
    assert sorted(map(sorted, length_groups([5, 100, 7, 99], 0.5))) == [[0], [1], [2], [3]]


def _models():
    torch.manual_seed(0)
    g = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=64, n_embd=16, n_layer=2, n_head=2,
                                   initializer_range=0.3)).eval()
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                      initializer_range=0.3)).eval()
    return {"gpt2": g, "llama": lm}


def _batch(seed=0, n=7):
    rng = random.Random(seed)
    pairs = [([rng.randrange(2, V) for _ in range(rng.randint(1, 6))],
              [rng.randrange(2, V) for _ in range(rng.randint(1, 3 if i % 2 else 30))]) for i in range(n)]
    return collate(pairs, PAD)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_trimmed_forward_equals_one_forward_on_every_real_position(arch):
    model = _models()[arch]
    b = _batch()
    real = b.attention_mask.bool()
    calls = []

    def run(ids, mask):
        calls.append(tuple(ids.shape))
        assert int(mask[:, -1].sum()) > 0  # never a column of padding only
        return model(input_ids=ids, attention_mask=mask).logits

    with torch.no_grad():
        whole = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        cut = trimmed(run, b.input_ids, b.attention_mask, call_cost=2.0)
    assert len(calls) > 1 and sum(r * length for r, length in calls) < b.input_ids.numel()  # less padding ran
    torch.testing.assert_close(cut[real], whole[real], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(cut).all() and (cut[~real] == 0).any()  # padding past a group's longest row: zeros
    with torch.no_grad():  # the wrappers used by the teacher and the metrics
        torch.testing.assert_close(dense_logits(model, b.input_ids, b.attention_mask, trim=True)[real], whole[real],
                                   rtol=1e-5, atol=1e-5)
        lazy = forward_logits(model, b.input_ids, b.attention_mask, None, trim=True)
        assert lazy.logits is None  # split: hidden states + head
        torch.testing.assert_close(lazy.rows(real).full(), whole[real], rtol=1e-5, atol=1e-5)


def test_left_padded_or_gradient_forwards_run_in_one_call():
    model = _models()["gpt2"]
    b = _batch()
    calls = []

    def run(ids, mask):
        calls.append(ids.shape)
        return model(input_ids=ids, attention_mask=mask).logits

    left = b.attention_mask.flip(1)  # not a prefix of ones: positions would shift, so no trimming
    with torch.no_grad():
        trimmed(run, b.input_ids, left, call_cost=0.0)
    assert calls == [b.input_ids.shape]
    n = [0]
    orig = model.forward

    def counting(*a, **k):
        n[0] += 1
        return orig(*a, **k)

    model.forward = counting
    dense_logits(model, b.input_ids, b.attention_mask, trim=True)  # gradient on: one call (DDP-safe)
    assert n[0] == 1


def test_sharded_or_length_scaled_models_keep_one_call(monkeypatch):
    monkeypatch.setattr(hidden, "_lean", lambda model, logits: None)  # count transformers' calls (trimming alone)
    b = _batch()
    for what in ("ds_id", "dynamic rope"):
        model = _models()["llama"]
        if what == "ds_id":
            model.model.layers[0].mlp.up_proj.weight.ds_id = 3  # a DeepSpeed ZeRO-3 partitioned weight
        else:
            model.config.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
        calls = [0]
        orig = model.model.forward

        def counting(*a, **k):
            calls[0] += 1
            return orig(*a, **k)

        model.model.forward = counting
        with torch.no_grad():
            forward_logits(model, b.input_ids, b.attention_mask, None, trim=True)
        assert calls[0] == 1, what
    plain = _models()["llama"]
    calls = [0]
    orig = plain.model.forward
    plain.model.forward = lambda *a, **k: calls.__setitem__(0, calls[0] + 1) or orig(*a, **k)
    hidden._CALL_FLOPS, saved = {"cpu": 0.0}, hidden._CALL_FLOPS
    try:
        with torch.no_grad():
            forward_logits(plain, b.input_ids, b.attention_mask, None, trim=True)
    finally:
        hidden._CALL_FLOPS = saved
    assert calls[0] > 1  # the same batch on a plain model does split


def test_call_cost_is_a_calls_overhead_in_tokens():
    toy = _models()["gpt2"]
    n = sum(p.numel() for p in toy.parameters())
    assert call_cost_tokens(toy) == pytest.approx(1e8 / (2 * n))
    big = torch.nn.Linear(4096, 4096)
    assert call_cost_tokens(big) < 3 < call_cost_tokens(toy)  # big models split on a few tokens of padding


def test_the_teacher_runs_trimmed_in_a_context_and_the_loss_is_unchanged(monkeypatch):
    from kdbench.config import TrainConfig
    from kdbench.method import MethodContext
    from kdbench.models import build_word_tokenizer

    tok = build_word_tokenizer([f"w{i}" for i in range(20)])
    teacher = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=2, n_head=2,
                                         initializer_range=0.3)).eval()
    student = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2))
    ctx = MethodContext(student=student, teacher=teacher, tokenizer=tok, train_examples=[],
                        train_cfg=TrainConfig(batch_size=7), max_length=64, max_prompt_length=16, run_dir=None,
                        device="cpu", progress=False, method_name="kd")
    b = _batch()
    b.input_ids = b.input_ids % len(tok)
    shapes, hf_calls = [], [0]
    orig, orig_trimmed = teacher.forward, hidden.trimmed

    def spy(*a, **k):
        hf_calls[0] += 1
        return orig(*a, **k)

    def spy_trimmed(fn, *a, **k):
        def run(ids, mask):
            shapes.append(tuple(ids.shape))
            return fn(ids, mask)
        return orig_trimmed(run, *a, **k)

    teacher.forward = spy
    monkeypatch.setattr(hidden, "trimmed", spy_trimmed)
    monkeypatch.setattr(hidden, "_CALL_FLOPS", {"cpu": 1e3})  # a call as cheap as a few tokens: it splits
    got = ctx.teacher_logits(b)
    assert len(shapes) > 1 and max(s[1] for s in shapes) == b.input_ids.shape[1] > min(s[1] for s in shapes)
    assert hf_calls[0] == 0  # a GPT-2 teacher without gradient: kdbench.lean's forward, not transformers'
    teacher.forward = orig
    with torch.no_grad():
        want = teacher(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    real = b.attention_mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)
