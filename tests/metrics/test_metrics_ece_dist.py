"""ECE, reliability bins, label-word normalisation, Dist-n and distinct responses.

Hand-worked values first, then a naive loop implementation written here compared with the
library on random inputs.
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from kdbench.metrics.base import METRICS, EvalContext
from kdbench.metrics.calibration import check_label_scores, ece, ece_values, label_word_probs, reliability_bins
from kdbench.metrics.diversity import dist_n, distinct_responses


# ------------------------------------------------------------------------------------------------
# ECE by hand


def test_ece_hand_example():
    # conf:    0.95 0.85 0.82 0.35 0.31   correct: 1 0 1 1 0   (N = 5, 10 bins)
    # bin 9 [0.9,1.0]: {0.95}       acc 1.0, conf 0.95  -> 1/5 * 0.05  = 0.010
    # bin 8 [0.8,0.9): {0.85,0.82}  acc 0.5, conf 0.835 -> 2/5 * 0.335 = 0.134
    # bin 3 [0.3,0.4): {0.35,0.31}  acc 0.5, conf 0.33  -> 2/5 * 0.17  = 0.068
    # ECE = 0.212
    assert ece([0.95, 0.85, 0.82, 0.35, 0.31], [1, 0, 1, 1, 0]) == pytest.approx(0.212, abs=1e-12)


def test_ece_edges_zero_and_one():
    # 1.0 goes to the last bin (acc 1, conf 1 -> 0); 0.0 to the first (acc 0, conf 0 -> 0);
    # 0.1 -> bin 1: 1/4 * |0 - 0.1| = 0.025; 0.5 -> bin 5: 1/4 * |1 - 0.5| = 0.125. ECE = 0.15
    assert ece([1.0, 0.0, 0.1, 0.5], [True, False, False, True]) == pytest.approx(0.15, abs=1e-12)
    bins = reliability_bins([1.0, 0.0, 0.1, 0.5], [True, False, False, True])
    assert [b["count"] for b in bins] == [1, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert bins[9]["confidence"] == 1.0 and bins[9]["accuracy"] == 1.0
    assert bins[0]["confidence"] == 0.0 and bins[0]["accuracy"] == 0.0


def test_ece_perfectly_calibrated_and_worst_case():
    # four predictions at 0.75, three right: acc 0.75 = conf 0.75 -> ECE 0
    assert ece([0.75] * 4, [1, 1, 1, 0]) == pytest.approx(0.0, abs=1e-12)
    # always sure, always wrong -> ECE 1
    assert ece([1.0, 1.0], [0, 0]) == pytest.approx(1.0)


def test_ece_n_bins_changes_grouping():
    # 2 bins: [0,0.5): {0.2, 0.4} acc 0.5 conf 0.3 -> 2/4 * 0.2 = 0.1
    #         [0.5,1]: {0.6, 0.9} acc 0.5 conf 0.75 -> 2/4 * 0.25 = 0.125   ECE = 0.225
    assert ece([0.2, 0.4, 0.6, 0.9], [1, 0, 0, 1], n_bins=2) == pytest.approx(0.225, abs=1e-12)


def test_reliability_bins_hand():
    bins = reliability_bins([0.95, 0.85, 0.82, 0.35, 0.31], [1, 0, 1, 1, 0])
    assert len(bins) == 10
    assert [(b["lo"], b["hi"]) for b in bins][:2] == [(0.0, 0.1), (0.1, 0.2)]
    assert bins[-1]["hi"] == 1.0
    assert [b["count"] for b in bins] == [0, 0, 0, 2, 0, 0, 0, 0, 2, 1]
    assert bins[8]["accuracy"] == 0.5 and bins[8]["confidence"] == pytest.approx(0.835)
    assert bins[3]["confidence"] == pytest.approx(0.33)
    assert bins[0]["accuracy"] is None and bins[0]["confidence"] is None  # empty bin
    assert sum(b["count"] for b in bins) == 5


@pytest.mark.parametrize("conf,correct,msg", [
    ([0.5, 0.6], [1], "2 values but correct has 1"),
    ([0.5, 1.2], [1, 0], r"\[0, 1\]"),
    ([-0.1], [1], r"\[0, 1\]"),
    ([float("nan")], [1], "NaN"),
    ([], [], "at least one"),
    ([0.5], [2], "0/1"),
])
def test_ece_validation(conf, correct, msg):
    with pytest.raises(ValueError, match=msg):
        ece(conf, correct)
    with pytest.raises(ValueError):
        reliability_bins(conf, correct)


def test_ece_bad_n_bins():
    with pytest.raises(ValueError, match="n_bins"):
        ece([0.5], [1], n_bins=0)


# ------------------------------------------------------------------------------------------------
# label-word normalisation and the registered metric


def test_label_word_probs_softmax_over_label_words():
    # p(label words) = 0.2, 0.6 (0.2 of the mass is elsewhere) -> normalised 0.25, 0.75
    pred, conf = label_word_probs([[math.log(0.2), math.log(0.6)], [math.log(0.3), math.log(0.1)]])
    assert pred.tolist() == [1, 0]
    assert conf.tolist() == pytest.approx([0.75, 0.75])
    # shift invariant and stable for very negative log-probs: sigmoid(1)
    pred, conf = label_word_probs([[-1000.0, -1001.0]])
    assert pred.tolist() == [0] and conf[0] == pytest.approx(1 / (1 + math.exp(-1)))
    # three labels, one impossible
    pred, conf = label_word_probs([[-float("inf"), math.log(0.1), math.log(0.3)]])
    assert pred.tolist() == [2] and conf[0] == pytest.approx(0.75)


@pytest.mark.parametrize("bad,msg", [
    ([1.0, 2.0], "2-D"),
    ([[0.0]], "two label words"),
    ([[float("nan"), 0.0]], "NaN"),
    ([[-float("inf"), -float("inf")]], "all -inf"),
])
def test_label_word_probs_validation(bad, msg):
    with pytest.raises(ValueError, match=msg):
        label_word_probs(bad)


def _ctx(predictions):
    from kdbench.schema import Example

    exs = [Example(id=f"e{i}", instruction="", input="", prompt="", references=[""]) for i in range(len(predictions))]
    return EvalContext(task=None, examples=exs, predictions=list(predictions), seed=10)


def test_ece_metric_not_applicable_without_a_model():
    m = METRICS.get("ece")
    assert m.kind == "model" and m.direction("ece") is False and m.direction("cls_acc") is True
    assert m.fn(EvalContext(task=None, examples=[], predictions=[], seed=10)) is None


def test_ece_values_from_label_scores():
    # normalised conf .92 .74 .63 .81; preds 0 1 0 1; gold 0 1 1 1 -> correct 1 1 0 1, acc 75
    # each in its own bin: (0.08 + 0.26 + 0.63 + 0.19) / 4 = 0.29
    lp = [[math.log(.92), math.log(.08)], [math.log(.26), math.log(.74)],
          [math.log(.63), math.log(.37)], [math.log(.19), math.log(.81)]]
    pred, conf, correct = check_label_scores(lp, [0, 1, 1, 1])
    assert pred.tolist() == [0, 1, 0, 1] and correct.tolist() == [True, True, False, True]
    out = ece_values(conf, correct)
    assert out["ece"] == pytest.approx(0.29, abs=1e-9)
    assert out["cls_acc"] == pytest.approx(75.0)
    assert [b["count"] for b in reliability_bins(conf, correct)] == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_label_scores_reject_bad_gold():
    with pytest.raises(ValueError, match="gold"):
        check_label_scores([[0.0, -1.0]], [2])
    with pytest.raises(ValueError, match="gold"):
        check_label_scores([[0.0, -1.0]], [0, 1])


# ------------------------------------------------------------------------------------------------
# Dist-n and distinct responses by hand


def test_dist_n_hand_examples():
    # 3 four-grams, all different -> 1.0
    assert dist_n(["the cat sat on the mat"], 4) == pytest.approx(100.0)
    # bigrams ab ba ab ba ab -> 2 distinct / 5 = 0.4
    assert dist_n(["a b a b a b"], 2) == pytest.approx(40.0)
    # lowercasing: "A a a a a" -> two identical four-grams -> 1/2
    assert dist_n(["A a a a a"], 4) == pytest.approx(50.0)
    # shorter than n (and empty) -> fully distinct
    assert dist_n(["short one", ""], 4) == pytest.approx(100.0)
    # averaged per response, not pooled: (0.4 + 1.0) / 2
    assert dist_n(["a b a b a b", "short"], 2) == pytest.approx(70.0)
    # whitespace of any kind splits tokens
    assert dist_n(["x\ty\nx  y"], 2) == pytest.approx(100.0 * 2 / 3)
    # the registered metric is Dist-4 over the predictions
    assert METRICS.get("dist4").fn(_ctx(predictions=["A a a a a", "the cat sat on the mat"])) == pytest.approx(75.0)


def test_dist_n_validation():
    with pytest.raises(ValueError, match="no responses"):
        dist_n([], 4)
    with pytest.raises(ValueError, match="positive"):
        dist_n(["a"], 0)
    with pytest.raises(ValueError, match="single string"):
        dist_n("a b c d", 2)


def test_distinct_responses_hand():
    # (2/3 + 4/4 + 1/2) / 3 = 0.7222...
    groups = [["x", "x", "y"], ["a", "b", "c", "d"], ["z", "z"]]
    assert distinct_responses(groups) == pytest.approx(100.0 * (2 / 3 + 1 + 0.5) / 3)
    assert distinct_responses([["same"] * 5]) == pytest.approx(20.0)
    assert distinct_responses([["Yes", "yes"]]) == pytest.approx(100.0)  # exact-string comparison
    with pytest.raises(ValueError, match="no samples"):
        distinct_responses([["a"], []])
    with pytest.raises(ValueError, match="no prompts"):
        distinct_responses([])


# ------------------------------------------------------------------------------------------------
# naive second implementations on random inputs


def naive_ece(conf, correct, n_bins):
    total = 0.0
    n = len(conf)
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = []
        for c, ok in zip(conf, correct):
            inside = lo <= c < hi or (b == n_bins - 1 and c == 1.0)
            if inside:
                members.append((c, ok))
        if members:
            acc = sum(1 for _, ok in members if ok) / len(members)
            mean_conf = sum(c for c, _ in members) / len(members)
            total += len(members) / n * abs(acc - mean_conf)
    return total


def naive_dist_n(texts, n):
    per = []
    for t in texts:
        words = t.lower().split()
        grams = []
        for i in range(len(words) - n + 1):
            grams.append(" ".join(words[i:i + n]))
        if not grams:
            per.append(1.0)
            continue
        seen = []
        for g in grams:
            if g not in seen:
                seen.append(g)
        per.append(len(seen) / len(grams))
    return 100.0 * sum(per) / len(per)


@pytest.mark.parametrize("seed", range(6))
def test_ece_matches_naive_on_random(seed):
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    n = rng.randint(1, 300)
    conf = np_rng.uniform(0, 1, size=n).tolist()
    conf[: max(1, n // 20)] = [rng.choice([0.0, 1.0]) for _ in range(max(1, n // 20))]  # include the edges
    correct = [rng.random() < c * 0.8 + 0.1 for c in conf]
    n_bins = rng.choice([1, 5, 10, 15])
    assert ece(conf, correct, n_bins=n_bins) == pytest.approx(naive_ece(conf, correct, n_bins), abs=1e-12)
    bins = reliability_bins(conf, correct, n_bins=n_bins)
    assert sum(b["count"] for b in bins) == n


@pytest.mark.parametrize("seed", range(6))
def test_ece_pipeline_from_logprobs_on_random(seed):
    np_rng = np.random.default_rng(100 + seed)
    k = int(np_rng.integers(2, 5))
    lp = np_rng.normal(-3, 2, size=(50, k))
    pred, conf = label_word_probs(lp)
    # naive softmax per row
    for row, p, c in zip(lp.tolist(), pred.tolist(), conf.tolist()):
        ex = [math.exp(v) for v in row]
        probs = [e / sum(ex) for e in ex]
        assert p == probs.index(max(probs))
        assert c == pytest.approx(max(probs), rel=1e-12)
    assert 0.0 <= ece(conf, pred == 0) <= 1.0


@pytest.mark.parametrize("seed", range(6))
def test_dist_n_matches_naive_on_random(seed):
    rng = random.Random(1000 + seed)
    vocab = ["a", "B", "c", "the", "The", "dog", "x"]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 14))) for _ in range(rng.randint(1, 30))]
    for n in (1, 2, 3, 4):
        assert dist_n(texts, n) == pytest.approx(naive_dist_n(texts, n), abs=1e-9)
