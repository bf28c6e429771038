"""Rouge-L follows MiniLLM's protocol: rouge_score with stemming, F-measure, max over refs, x100."""
import pytest
from rouge_score import rouge_scorer

from kdbench.metrics import exact_match, rouge_l


def test_rouge_l_equals_rouge_score_on_examples():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    preds = ["the cat sat on the mat", "Running quickly to the stores", "", "a b c"]
    refs = [["the cat is on the mat"], ["he runs quick to the store", "totally different"], ["x"], ["c b a", "a b c"]]
    expected = [max(scorer.score(r, p)["rougeL"].fmeasure for r in rs) for p, rs in zip(preds, refs)]
    assert rouge_l(preds, refs) == pytest.approx(100 * sum(expected) / len(expected))


def test_rouge_l_takes_the_max_over_references_and_stems():
    assert rouge_l(["dogs running"], [["cat", "dog run"]]) == pytest.approx(100.0)
    assert rouge_l(["abc"], [["xyz"]]) == 0.0


def test_rouge_l_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="2 predictions but 1"):
        rouge_l(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="at least one reference"):
        rouge_l(["a"], [[]])


def test_exact_match_normalises_case_punctuation_and_spaces_but_keeps_articles():
    assert exact_match(["The  Cat."], [["the cat"]]) == 100.0
    assert exact_match(["cat"], [["the cat"]]) == 0.0
