"""Shared setup for the method tests of the newer KD methods (distillm2, skd, uld): the toy world with 4
creatures, its word tokenizer, a 1-layer GPT-2 student near uniform and a peaked random teacher."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench.config import TrainConfig
from kdbench.data import lm_blocks
from kdbench.method import MethodContext
from kdbench.models import build_word_tokenizer
from kdbench.sampling import SamplingConfig
from kdbench.task import TaskOptions
from tasks.toy import ToyTask

MAXLEN, MAXPROMPT, NEW = 40, 20, 8


def toy_world():
    task = ToyTask(TaskOptions(extra={"n_creatures": 4, "n_train": 64, "n_dev": 4, "n_test": 4, "pretrain_docs": 40}))
    tok = build_word_tokenizer(task.vocabulary())
    return SimpleNamespace(task=task, tok=tok, exs=task.examples("train"),
                           blocks=lm_blocks(tok, task.pretrain_texts(), MAXLEN))


def gpt2(tok, seed: int, std: float, n_positions: int = MAXLEN):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=32, n_layer=1, n_head=2,
                     initializer_range=std, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return GPT2LMHeadModel(cfg)


def make_ctx(tok, exs, teacher, tmp_path, *, steps, lr=1e-2, batch_size=8, teacher_samples=None, student=None,
             max_length=MAXLEN, max_prompt_length=MAXPROMPT, new=NEW, **kw):
    train = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, schedule="constant", log_every=1, seed=0)
    return MethodContext(student=student if student is not None else gpt2(tok, seed=1, std=0.02), teacher=teacher,
                         tokenizer=tok, train_examples=exs, train_cfg=train, max_length=max_length,
                         max_prompt_length=max_prompt_length, run_dir=tmp_path,
                         sampling=SamplingConfig(max_new_tokens=new),
                         teacher_samples_fn=(lambda: teacher_samples) if teacher_samples else None,
                         device="cpu", method_name="test", progress=False, **kw)
