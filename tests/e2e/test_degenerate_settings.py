"""Degenerate settings nobody means are refused before any training, with the key, the value and
what would be valid; or, where the run can go on, flagged in the log. One test per case."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kdbench.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def run(args: list[str], tmp_path: Path, capsys, dry: bool = False) -> tuple[int, str]:
    out = tmp_path / "out"
    code = main(["--preset", "ci", "--no-progress", "--out", str(out), *args, *(["--dry-run"] if dry else [])])
    cap = capsys.readouterr()
    assert not (out / "cells").exists(), "work started despite the degenerate setting"
    return code, cap.err + cap.out


def refused(args, tmp_path, capsys, *needles, dry=False):
    code, text = run(args, tmp_path, capsys, dry)
    assert code == 2, text
    for n in needles:
        assert n in text, f"{n!r} not in: {text}"


# -- budgets -------------------------------------------------------------------------------------

def test_zero_distillation_budget_is_refused(tmp_path, capsys):
    # sft and kd rows would equal the student base, and be bolded as the best students
    refused(["--set", "distill.steps=0"], tmp_path, capsys, "distill.steps", "0 trains nothing")


def test_zero_budget_of_a_budget_class_is_refused(tmp_path, capsys):
    refused(["--methods", "sft,single_step", "--set", "budget_train.on_policy.steps=0"], tmp_path, capsys,
            "budget_train.on_policy.steps", "'single_step' untrained")


def test_zero_budget_of_one_method_is_refused(tmp_path, capsys):
    refused(["--set", "method_train.kd.steps=0"], tmp_path, capsys, "method_train.kd.steps", "'kd' untrained")


def test_misspelt_budget_class_is_refused(tmp_path, capsys):
    # it would silently leave the on-policy methods on the distill budget
    refused(["--set", "budget_train.onpolicy.steps=5"], tmp_path, capsys, "budget_train.onpolicy",
            "no method has budget class 'onpolicy'", "on_policy")


def test_repeated_tuning_value_is_refused(tmp_path, capsys):
    refused(["--tune", "lr=0.001,0.001"], tmp_path, capsys, "--tune lr", "more than once")


def test_warmup_longer_than_training_is_flagged(tmp_path, capsys):
    code, text = run(["--set", "distill.warmup_steps=40", "--dry-run"], tmp_path, capsys)
    assert code == 0
    assert "the training of 'kd': warmup_steps 40 >= steps 30, so the learning rate never reaches its peak" in text


def test_batch_larger_than_the_train_set_is_flagged(tmp_path, capsys, monkeypatch):
    from kdbench.runner import Benchmark

    seen = []
    monkeypatch.setattr(Benchmark, "_run", lambda self: seen.append(1) or [])  # validation only
    code, text = run(["--set", "task_options.toy.n_train=20", "--set", "method_train.kd.batch_size=32"],
                     tmp_path, capsys)
    assert code == 0 and seen
    assert "kd: batch_size 32 is larger than the 20 train examples of 'toy'" in text
    assert "sft: batch_size" not in text


# -- lists and names ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, key, name", [
    (["--methods", "sft,kd,kd"], "methods", "kd"),
    (["--tasks", "toy,toy"], "tasks", "toy"),
    (["--student", "gpt2-toy-xs,gpt2-toy-xs"], "students", "gpt2-toy-xs"),
])
def test_a_name_listed_twice_is_refused(tmp_path, capsys, args, key, name):
    refused(args, tmp_path, capsys, f"config key '{key}'", f"names {name} more than once")


def test_baseline_outside_the_run_is_refused(tmp_path, capsys):
    # the comparisons would silently fall back to no baseline
    refused(["--baseline", "seqkd"], tmp_path, capsys, "--baseline seqkd", "not among the methods", "sft, kd")


def test_teacher_as_its_own_student_is_refused(tmp_path, capsys):
    refused(["--student", "gpt2-toy-s"], tmp_path, capsys, "config key 'students'", "'gpt2-toy-s' is also the teacher")


def test_zero_train_example_cap_is_refused(tmp_path, capsys):
    refused(["--set", "max_train_examples=0"], tmp_path, capsys, "max_train_examples", ">= 1")


# -- tasks left with no prompt --------------------------------------------------------------------

def test_dry_run_with_no_prompt_under_the_limit_is_an_error(tmp_path, capsys):
    # the toy prompts are >= 5 tokens: a limit of 3 keeps none (as the 24-token tiny limit on dolly)
    refused(["--set", "max_prompt_length=3"], tmp_path, capsys, "toy/test: 0 of", "max_prompt_length=3",
            "the shortest has", "ready: none", dry=True)


def test_run_with_no_prompt_under_the_limit_fails_before_training(tmp_path, capsys):
    refused(["--set", "max_prompt_length=3"], tmp_path, capsys, "toy/train: 0 of", "max_prompt_length=3",
            "set max_prompt_length to at least")
    assert not any((tmp_path / "out" / "cache").glob("teacher-*")), "a model stage was built"


@pytest.mark.parametrize("cap_key", ["eval", "train"])
def test_caps_above_the_data_are_flagged(tmp_path, cap_key):
    from kdbench.config import BenchConfig, EvalConfig
    from kdbench.models import build_word_tokenizer
    from kdbench.taskset import TaskSet

    cfg = BenchConfig(students=["gpt2-toy-xs"], max_length=48, max_prompt_length=24,
                      task_options={"toy": {"n_creatures": 4, "n_test": 6, "n_train": 10, "pretrain_docs": 10}},
                      eval=EvalConfig(max_examples=500), max_train_examples=500)
    holder = {}
    ts = TaskSet(cfg, lambda: holder.setdefault("tok", build_word_tokenizer(ts.get("toy").vocabulary())))
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # the kdbench logger may not propagate
    logging.getLogger("kdbench").addHandler(handler)
    get = ts.test_examples if cap_key == "eval" else (lambda _: ts.train_examples())
    try:
        n = len(get("toy"))
        get("toy")  # said once
    finally:
        logging.getLogger("kdbench").removeHandler(handler)
    msgs = [r.getMessage() for r in records if "500" in r.getMessage()]
    key, split = ("eval.max_examples", "test") if cap_key == "eval" else ("max_train_examples", "train")
    assert msgs == [f"toy/{split}: {key}=500 but the task has {n} examples: all {n} are used"]
