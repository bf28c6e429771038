"""The toy world: deterministic splits, held-out combinations, and an exact checker."""
import random

import pytest

from kdbench.errors import ConfigError
from kdbench.task import TaskOptions, make_task
from kdbench.toyworld import FAMILIES, IN_DISTRIBUTION, MODE_PROBS, ToyWorld, ToyWorldConfig


@pytest.fixture(scope="module")
def task():
    return make_task("toy", TaskOptions(extra={"n_train": 700, "n_test": 140, "n_dev": 70}))


def test_splits_are_deterministic_and_cover_every_family(task):
    again = make_task("toy", TaskOptions(extra={"n_train": 700, "n_test": 140, "n_dev": 70}))
    for split in ("train", "dev", "test"):
        a, b = task.examples(split), again.examples(split)
        assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
        assert {e.meta["family"] for e in a} == set(FAMILIES)


def test_test_split_holds_out_combinations(task):
    train = task.examples("train")
    test = task.examples("test")
    train_prompts = {e.prompt for e in train}
    # No test prompt appears verbatim in training (held-out creature x question pairs, new lists),
    # except in the in-distribution families (yes/no calibration, long-form describe).
    assert not [e.prompt for e in test if e.prompt in train_prompts and e.meta["family"] not in IN_DISTRIBUTION]


def test_checker_accepts_every_reference(task):
    for split in ("train", "test"):
        for ex in task.examples(split):
            for ref in ex.references:
                assert task.check(ex, ref)["valid"], (ex.prompt, ref)
            assert task.check(ex, ex.target)["valid"]


def test_checker_rejects_corruptions(task):
    rng = random.Random(0)
    vocab = task.vocabulary()
    for ex in task.examples("test"):
        ref = ex.references[0].split()
        corruptions = [ref[:-1], ref + [rng.choice(vocab)], [rng.choice(vocab) if i == 0 else w for i, w in enumerate(ref)]]
        if len(ref) > 1 and ref != ref[::-1]:
            corruptions.append(ref[::-1])
        for c in corruptions:
            text = " ".join(c)
            if text in ex.references:
                continue
            assert not task.check(ex, text)["valid"], (ex.prompt, text)


def test_choose_family_reports_the_mode(task):
    ex = next(e for e in task.examples("test") if e.meta["family"] == "choose")
    assert task.check(ex, ex.references[1]) == {"valid": True, "mode": ex.references[1]}
    assert task.check(ex, "the") == {"valid": False, "mode": None}
    assert abs(sum(ex.meta["mode_probs"]) - 1) < 1e-9


def test_choose_targets_follow_the_mode_distribution():
    world = ToyWorld(ToyWorldConfig(n_train=3500))
    picks = [e for e in world.split("train") if e["meta"]["family"] == "choose"]
    share_top = sum(e["target"] == e["references"][0] for e in picks) / len(picks)
    assert abs(share_top - MODE_PROBS[0]) < 0.06


def test_pretraining_text_states_every_creatures_facts():
    world = ToyWorld(ToyWorldConfig(n_creatures=8, pretrain_docs=400))
    text = " ".join(world.pretrain_texts())
    for name, facts in world.creatures.items():
        assert name in text and facts["color"] in text


def test_every_word_is_in_the_vocabulary(task):
    vocab = set(task.vocabulary())
    for ex in task.examples("train")[:300]:
        assert set(ex.prompt.split()) <= vocab
        assert set(ex.target.split()) <= vocab


def test_bad_world_config_names_the_key():
    with pytest.raises(ConfigError, match="toy.families"):
        ToyWorldConfig(families=["fact", "bogus"])
    with pytest.raises(ConfigError, match="held_out_fraction"):
        ToyWorldConfig(held_out_fraction=1.5)


def test_yesno_test_split_is_large_enough_for_calibration():
    world = ToyWorld(ToyWorldConfig())
    test = world.split("test")
    yesno = [e for e in test if e["meta"]["family"] == "yesno"]
    assert len(yesno) >= 200
    # every attribute is asked, with both answers
    assert {e["instruction"].split()[0] for e in yesno} == {"is", "does"}
    assert {e["references"][0] for e in yesno} == {"yes", "no"}


def test_held_out_facts_are_in_pretraining_but_not_in_sft_data():
    world = ToyWorld(ToyWorldConfig())
    text = set(world.pretrain_texts())
    joined = " ".join(text)
    train = world.split("train")
    trained = {(e["references"][0]) for e in train if e["meta"]["family"] == "fact"}
    held = [e for e in world.split("test") if e["meta"]["family"] == "fact"]
    assert held
    for e in held:
        ref = e["references"][0]
        assert ref in joined, ref  # the teacher can know it from pretraining ...
        assert ref not in trained, ref  # ... but no SFT fact answer states it
    # describe answers state facts too: a held-out fact question's creature may still be described in
    # training, but the question itself (the instruction-format combination) never is
    assert not {e["prompt"] for e in held} & {e["prompt"] for e in train}


def test_unlabeled_split_holds_prompts_without_gold():
    world = ToyWorld(ToyWorldConfig(n_unlabeled=300))
    unl = world.split("unlabeled")
    assert len(unl) == 300 and all(e["meta"]["gold_hidden"] for e in unl)
    assert not {e["meta"]["family"] for e in unl} & set(IN_DISTRIBUTION)
    train_prompts = {e["prompt"] for e in world.split("train")}
    assert not [e["prompt"] for e in unl if e["prompt"] in train_prompts]
    test_inputs = {e["input"] for e in world.split("test") if e["input"]}
    assert not [e["input"] for e in unl if e["input"] in test_inputs]
    # its fact prompts ask only held-out pairs (what only the teacher's pretraining covers)
    trained = {e["references"][0] for e in world.split("train") if e["meta"]["family"] == "fact"}
    facts = [e for e in unl if e["meta"]["family"] == "fact"]
    assert facts and not [e for e in facts if e["references"][0] in trained]


def test_unlabeled_split_through_the_task():
    task = make_task("toy", TaskOptions(extra={"n_train": 70, "n_test": 14, "n_dev": 7, "n_unlabeled": 20}))
    unl = task.examples("unlabeled")
    assert len(unl) == 20 and all(e.meta["gold_hidden"] for e in unl)
