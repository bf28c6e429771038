"""MiniLLM's L_PT term under a split batch: the trainer weights each micro-batch (and each rank's
share, docs/scaling.md) by its share of the step's response tokens, while L_PT is a mean over its
own tokens; `pt_share` rescales it so that a step's update does not depend on the split."""
from __future__ import annotations

import dataclasses

import pytest

from kdbench.method import MethodContext, make_method
from kdbench.sampling import SamplingConfig
from toy_kd import MAXLEN, MAXPROMPT, NEW, gpt2, toy_world

pytestmark = pytest.mark.usefixtures("one_thread")


def _history(w, teacher, tmp_path, grad_accum: int) -> list[dict]:
    from kdbench.config import TrainConfig

    train = TrainConfig(steps=2, batch_size=8, grad_accum=grad_accum, lr=1e-2, schedule="constant", log_every=1,
                        seed=0, warmup_steps=0)
    ctx = MethodContext(student=gpt2(w.tok, seed=1, std=0.02), teacher=teacher, tokenizer=w.tok, train_examples=w.exs,
                        train_cfg=train, max_length=MAXLEN, max_prompt_length=MAXPROMPT, run_dir=tmp_path,
                        sampling=SamplingConfig(max_new_tokens=NEW), pretrain_blocks=w.blocks, device="cpu",
                        method_name="minillm", progress=False)
    make_method("minillm", {"rollout_minibatches": 1, "ppo_epochs": 1}).train(ctx)
    return ctx.history


def test_the_lpt_term_is_the_same_however_the_batch_is_split(tmp_path):
    w = toy_world()
    teacher = gpt2(w.tok, seed=2, std=0.3)
    one, two = _history(w, teacher, tmp_path / "a", 1), _history(w, teacher, tmp_path / "b", 2)
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        # float summation order only (a split weighted by response tokens is off by ~1e-4 here)
        assert a["pt"] == pytest.approx(b["pt"], rel=2e-6), (a, b)
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-6), (a, b)
