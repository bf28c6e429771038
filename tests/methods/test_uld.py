"""ULD across tokenizers: the sorted L1's closed-form cases, byte-span alignment and the group merge by
hand, the step-1 loss on a fixed batch against an independent loop, and a word-level teacher
distilled into a BPE-level student."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdbench.errors import ConfigError
from kdbench.method import make_method
from kdbench.models import build_bpe_tokenizer
from kdbench.token_alignment import align_spans, encode_with_spans, positional_groups
from methods.uld import merged_logprobs, pair_batch, sorted_l1, teacher_view, uld_distance
from toy_kd import gpt2, make_ctx, toy_world

pytestmark = pytest.mark.usefixtures("one_thread")
MAXLEN, MAXPROMPT = 80, 40


def _lp(*probs):
    return torch.tensor([list(p) for p in probs]).log()


def test_sorted_l1_closed_forms():
    assert float(sorted_l1(_lp((0.4, 0.6)), _lp((0.7, 0.3)))[0]) == pytest.approx(0.2, abs=1e-6)
    p = _lp((0.5, 0.2, 0.3))
    assert float(sorted_l1(p, p)[0]) == pytest.approx(0.0, abs=1e-7)
    # zero padding: 3 entries against 5; sorted (0.5, 0.3, 0.2, 0, 0) vs (0.4, 0.3, 0.1, 0.1, 0.1)
    five = _lp((0.1, 0.4, 0.1, 0.3, 0.1))
    assert float(sorted_l1(p, five)[0]) == pytest.approx(0.1 + 0 + 0.1 + 0.1 + 0.1, abs=1e-6)
    assert float(sorted_l1(five, p)[0]) == pytest.approx(0.4, abs=1e-6)  # symmetric


def test_sorted_l1_ignores_a_permutation_of_the_student_vocabulary():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 9, generator=g).log_softmax(-1), torch.randn(4, 6, generator=g).log_softmax(-1)
    perm = torch.randperm(9, generator=g)
    assert torch.allclose(sorted_l1(s, t), sorted_l1(s[:, perm], t), atol=1e-6)


def test_byte_span_alignment_by_hand():
    assert align_spans([(0, 2), (2, 5)], [(0, 1), (1, 2), (2, 5)]) == [([0], [0, 1]), ([1], [2])]
    # whitespace a word tokenizer skips lies between spans; leftovers form one last group
    assert align_spans([(0, 1), (1, 3), (3, 4), (4, 7)], [(0, 3), (4, 7)]) == [([0, 1], [0]), ([2, 3], [1])]
    assert align_spans([(0, 3), (3, 6)], [(0, 2), (2, 4), (4, 5)]) == [([0, 1], [0, 1, 2])]
    assert positional_groups(3, 5) == [([0], [0]), ([1], [1]), ([2], [2])]


def test_byte_spans_count_bytes_not_characters():
    world = toy_world()
    tok = build_bpe_tokenizer(["héllo wörld " * 20], 270)
    _, r, spans = encode_with_spans(tok, "x ", "héllo wörld", 64, 32)
    assert spans[-1][1] == len("héllo wörld".encode()) and len(spans) == len(r) - 1
    _, r, spans = encode_with_spans(world.tok, "the", " tiko lives", 64, 32)
    assert spans == [(1, 5), (6, 11)]


def test_observed_merge_matches_the_docs_example():
    # a two-token group: p_first = (0.6, 0.3, 0.1), the second token (id 0) has probability 0.9
    logits = _lp((0.6, 0.3, 0.1), (0.9, 0.05, 0.05)).unsqueeze(0)
    labels = torch.tensor([[1, 0]])
    merged = merged_logprobs(logits, labels, torch.tensor([[0]]), torch.tensor([[0, 0]])).exp()
    assert merged[0, 0].tolist() == pytest.approx([0.54, 0.27, 0.09], abs=1e-6)


@pytest.fixture(scope="module")
def cross():
    world = toy_world()
    texts = world.task.pretrain_texts() + [e.prompt + e.target for e in world.exs]
    stok = build_bpe_tokenizer(texts, 300)  # subword student: about two tokens per word
    teacher = gpt2(world.tok, seed=7, std=0.5, n_positions=MAXLEN).eval()
    return world, stok, teacher


def test_identical_tokenizers_give_singleton_groups_and_per_position_l1(cross):
    world, _, teacher = cross
    exs = world.exs[:4]
    b = pair_batch(world.tok, world.tok, exs, [e.target for e in exs], MAXLEN, MAXPROMPT)
    assert torch.equal(b.extras["t_input_ids"], b.input_ids)
    assert torch.equal(b.extras["s_group"] >= 0, b.labels != -100)  # one group per response token, EOS included
    student = gpt2(world.tok, seed=1, std=0.3, n_positions=MAXLEN)
    with torch.no_grad():
        s = student(input_ids=b.input_ids).logits
        t = teacher(input_ids=b.input_ids).logits
    keep = b.labels != -100
    per_pos = sorted_l1(s[keep].log_softmax(-1), t[keep].log_softmax(-1))
    expected = np.mean([float(v.mean()) for v in torch.split(per_pos, keep.sum(-1).tolist())])
    assert float(uld_distance(s, t, b)) == pytest.approx(expected, rel=1e-5)
    assert float(uld_distance(t, t, b)) == pytest.approx(0.0, abs=1e-6)


def _independent_uld(stok, ttok, student, teacher, exs):
    """Per example: tokenise each side, align with align_spans, merge each group with explicit loops
    over full-forward log-probs, sorted L1 with numpy; mean over groups, then over examples."""
    vals = []
    for ex in exs:
        sides = []
        for tok, model in ((stok, student), (ttok, teacher)):
            p, r, spans = encode_with_spans(tok, ex.prompt, ex.target, MAXLEN, MAXPROMPT)
            with torch.no_grad():
                lp = model(input_ids=torch.tensor([p + r])).logits[0].log_softmax(-1).double().numpy()
            sides.append((p, r, spans, lp))
        (ps, rs, ss, ls), (pt, rt, st, lt) = sides
        groups = align_spans(ss, st) + [([len(ss)], [len(st)])]  # the EOS pair

        def merged(p, r, lp, idx):
            out = lp[len(p) - 1 + idx[0]].copy()
            for i in idx[1:]:
                out += lp[len(p) - 1 + i][r[i]]
            return np.sort(np.exp(out))[::-1]

        d = []
        for gi, gj in groups:
            a, b = merged(ps, rs, ls, gi), merged(pt, rt, lt, gj)
            n = max(len(a), len(b))
            d.append(np.abs(np.pad(a, (0, n - len(a))) - np.pad(b, (0, n - len(b)))).sum())
        vals.append(np.mean(d))
    return float(np.mean(vals))


def test_step_one_loss_on_a_fixed_batch_matches_an_independent_loop(cross, tmp_path):
    world, stok, teacher = cross
    exs = [e for e in world.exs if len(stok(e.prompt + e.target)["input_ids"]) < MAXLEN - 2]
    student = gpt2(stok, seed=1, std=0.3, n_positions=MAXLEN)
    ctx = make_ctx(stok, exs, teacher, tmp_path, steps=1, lr=1e-6, batch_size=4, student=student,
                   max_length=MAXLEN, max_prompt_length=MAXPROMPT, teacher_tokenizer=world.tok)
    first = next(ctx.example_batches())
    b = pair_batch(stok, world.tok, first, [e.target for e in first], MAXLEN, MAXPROMPT)
    assert any(len(si) > 1 for row in range(4) for si, _ in
               align_spans(*[encode_with_spans(t, first[row].prompt, first[row].target, MAXLEN, MAXPROMPT)[2]
                             for t in (stok, world.tok)]))  # really several student tokens per word
    expected_uld = _independent_uld(stok, world.tok, student, teacher, first)
    with torch.no_grad():
        s = student(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        ce = float(torch.nn.functional.cross_entropy(s.flatten(0, 1), b.labels.flatten(), ignore_index=-100))
        got = float(uld_distance(s, teacher(input_ids=teacher_view(b).input_ids,
                                            attention_mask=teacher_view(b).attention_mask).logits, b))
    assert got == pytest.approx(expected_uld, rel=1e-4)
    make_method("uld", {"data": "gold", "ce_weight": 0.3, "distil_weight": 2.0}).train(ctx)
    h = ctx.history[0]
    assert h["uld"] == pytest.approx(expected_uld, rel=1e-4) and h["ce"] == pytest.approx(ce, rel=1e-4)
    assert h["loss"] == pytest.approx(0.3 * ce + 2.0 * expected_uld, rel=1e-4)


def test_positional_alignment_differs_across_tokenizers(cross):
    world, stok, _ = cross
    exs = world.exs[:4]
    spans = pair_batch(stok, world.tok, exs, [e.target for e in exs], MAXLEN, MAXPROMPT)
    pos = pair_batch(stok, world.tok, exs, [e.target for e in exs], MAXLEN, MAXPROMPT, alignment="positional")
    assert not torch.equal(spans.extras["s_group"], pos.extras["s_group"])
    # positional: one token per group; the student's EOS is never in a group, the teacher's may be
    assert int((pos.extras["s_group"] >= 0).sum()) == int(pos.extras["g_mask"].sum())


def test_word_teacher_distils_into_a_bpe_student(cross, tmp_path):
    world, stok, teacher = cross
    exs = world.exs
    student = gpt2(stok, seed=1, std=0.02, n_positions=MAXLEN)
    ctx = make_ctx(stok, exs, teacher, tmp_path, steps=12, lr=1e-2, batch_size=8, student=student,
                   max_length=MAXLEN, max_prompt_length=MAXPROMPT, teacher_tokenizer=world.tok,
                   teacher_samples=[e for e in exs])
    fixed = pair_batch(stok, world.tok, exs[:16], [e.target for e in exs[:16]], MAXLEN, MAXPROMPT)

    def uld_now():
        with torch.no_grad():
            tv = teacher_view(fixed)
            return float(uld_distance(student(input_ids=fixed.input_ids, attention_mask=fixed.attention_mask).logits,
                                      teacher(input_ids=tv.input_ids, attention_mask=tv.attention_mask).logits, fixed))
    before = uld_now()
    make_method("uld").train(ctx)
    assert all(math.isfinite(r["loss"]) for r in ctx.history)
    assert uld_now() < 0.8 * before


def test_config_defaults_and_validation():
    c = make_method("uld").config
    assert (c.distil_weight, c.ce_weight, c.alignment, c.data) == (1.5, 1.0, "spans", "teacher")
    assert make_method("uld").cross_tokenizer and not make_method("kd").cross_tokenizer
    with pytest.raises(ConfigError, match="method_config.uld.alignment"):
        make_method("uld", {"alignment": "bytes"})


def test_the_configured_alignment_reaches_the_loss(cross, tmp_path):
    world, stok, teacher = cross
    student = gpt2(stok, seed=1, std=0.3, n_positions=MAXLEN)
    ctx = make_ctx(stok, world.exs, teacher, tmp_path, steps=1, lr=1e-9, batch_size=4, student=student,
                   max_length=MAXLEN, max_prompt_length=MAXPROMPT, teacher_tokenizer=world.tok)
    first = next(ctx.example_batches())
    b = pair_batch(stok, world.tok, first, [e.target for e in first], MAXLEN, MAXPROMPT, alignment="positional")
    with torch.no_grad():
        tv = teacher_view(b)
        expected = float(uld_distance(student(input_ids=b.input_ids, attention_mask=b.attention_mask).logits,
                                      teacher(input_ids=tv.input_ids, attention_mask=tv.attention_mask).logits, b))
    make_method("uld", {"data": "gold", "alignment": "positional"}).train(ctx)
    assert ctx.history[0]["uld"] == pytest.approx(expected, rel=1e-4)
