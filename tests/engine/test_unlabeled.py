"""Prompts without gold (the toy world's "unlabeled" split): every teacher-guided method learns from
them, with the teacher's sample wherever it needs a target; SFT never sees them, and their gold
never reaches training.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench.cli import main
from kdbench.config import BenchConfig, TrainConfig
from kdbench.data import lm_blocks
from kdbench.layout import RunLayout
from kdbench.method import METHODS, MethodContext, make_method
from kdbench.models import build_word_tokenizer
from kdbench.plugins import load_plugins
from kdbench.sampling import SamplingConfig
from kdbench.task import TaskOptions
from kdbench.taskset import TaskSet
from micro_run import MICRO
from tasks.toy import ToyTask

load_plugins()
pytestmark = pytest.mark.usefixtures("one_thread")

OPTS = {"n_creatures": 4, "n_train": 64, "n_dev": 4, "n_test": 4, "pretrain_docs": 40, "n_unlabeled": 16}


def test_taskset_gives_unlabeled_prompts_without_their_gold():
    task = ToyTask(TaskOptions(extra=OPTS))
    tok = build_word_tokenizer(task.vocabulary())
    cfg = BenchConfig(preset="ci", task_options={"toy": OPTS}, max_prompt_length=64)
    exs = TaskSet(cfg, lambda: tok).unlabeled_examples()
    assert len(exs) == 16
    assert all(e.references == [] and "target" not in e.meta and e.target == "" for e in exs)
    assert all(e.meta["gold_hidden"] for e in exs)
    assert TaskSet(dataclasses.replace(cfg, use_unlabeled=False), lambda: tok).unlabeled_examples() == []


def _gpt2(tok, seed):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=40, n_embd=16, n_layer=1, n_head=2,
                                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id))


TEACHER_LABEL = "teacher label"  # two words of the toy vocabulary: visibly not any gold answer


@pytest.fixture(scope="module")
def world():
    task = ToyTask(TaskOptions(extra=OPTS))
    tok = build_word_tokenizer(task.vocabulary())
    train = task.examples("train")
    unl = [dataclasses.replace(e, references=[], meta={k: v for k, v in e.meta.items() if k != "target"})
           for e in task.examples("unlabeled")]
    labelled = [dataclasses.replace(e, meta={**e.meta, "target": "the red"}) for e in unl]
    return dict(task=task, tok=tok, train=train, unl=unl, labelled=labelled,
                blocks=lm_blocks(tok, task.pretrain_texts(), 40))


def _data_seen(name, world, tmp_path, with_teacher=True):
    """Which examples a method asks batches of (every method draws its data via example_batches)."""
    tok = world["tok"]
    ctx = MethodContext(student=_gpt2(tok, 1), teacher=_gpt2(tok, 2) if with_teacher else None, tokenizer=tok,
                        train_examples=world["train"],
                        train_cfg=TrainConfig(steps=1, batch_size=4, lr=1e-3, log_every=1, seed=0),
                        max_length=40, max_prompt_length=20, run_dir=tmp_path, pretrain_blocks=world["blocks"],
                        sampling=SamplingConfig(max_new_tokens=4),
                        teacher_samples_fn=lambda: world["train"] + world["labelled"],
                        unlabeled_fn=lambda: world["labelled"],
                        unlabeled_prompts=world["unl"] if with_teacher else (),
                        device="cpu", method_name=name, progress=False)
    seen: list = []
    inner = ctx.example_batches

    def spy(examples=None, *a, **k):
        seen.extend(examples if examples is not None else ctx.guided_examples())
        return inner(examples, *a, **k)

    ctx.example_batches = spy
    ctx.fit = lambda loss_fn, batches, *a, **k: next(iter(batches))  # one batch is enough to see its data
    overrides = {"dev_size": 4} if name == "distillm" else None
    make_method(name, overrides).train(ctx)
    return seen


GUIDED = [n for n in METHODS.names() if METHODS.get(n).requires_teacher and not METHODS.get(n).shared_stage]


@pytest.mark.parametrize("name", GUIDED)
def test_teacher_guided_methods_learn_from_unlabeled_prompts_with_teacher_targets(name, world, tmp_path):
    seen = _data_seen(name, world, tmp_path)
    unl_ids = {e.id for e in world["unl"]}
    got = [e for e in seen if e.id in unl_ids]
    assert {e.id for e in got} == unl_ids, f"{name} never draws the unlabeled prompts"
    # where one of them carries a target, it is the teacher's, never the hidden gold
    assert all(e.target in ("", "the red") for e in got)


def test_the_unlabeled_prompts_change_teacher_guided_keys_only(tmp_path):
    out = tmp_path / "run"
    base = MICRO + ["--methods", "sft,kd", "--out", str(out), "--set", "eval.max_examples=2"]
    assert main(base) == 0
    layout = RunLayout(out)
    kd_cfg = json.loads((layout.train_cell("gpt2-toy-xs", "kd") / "config.json").read_text())
    assert kd_cfg["unlabeled"] == {"split": "unlabeled", "n": 12}
    assert list((out / "cache").glob("teacher-samples-unlabeled-*")), "no cached teacher labels stage"
    keys = {m: json.loads((layout.train_cell("gpt2-toy-xs", m) / "result.json").read_text())["key"]
            for m in ("sft", "kd")}
    assert main(base + ["--set", "use_unlabeled=false"]) == 0
    again = {m: json.loads((layout.train_cell("gpt2-toy-xs", m) / "result.json").read_text())["key"]
             for m in ("sft", "kd")}
    assert again["sft"] == keys["sft"]  # SFT never sees them: its cached student is reused
    assert again["kd"] != keys["kd"]
