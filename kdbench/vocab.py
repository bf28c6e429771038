"""The shared vocabulary of a run: which tokenizer the teacher and students use (pure: builds, never saves).

A real teacher brings its own tokenizer; a built-in preset teacher gets one built on the run's tasks:
word-level when every task lists its vocabulary (the toy world), byte-level BPE otherwise. The stage
cache (kdbench.stages) saves what this builds; the dry run builds it in memory only.
"""
from __future__ import annotations

from typing import Sequence

from . import models as M


def recipe(cfg, tasks: Sequence) -> dict:
    """What determines the built-in tokenizer (its stage's cache spec)."""
    word = cfg.build.tokenizer == "word" and all(hasattr(t, "vocabulary") for t in tasks)
    return {"tokenizer": "word" if word else "bpe", "bpe_vocab": cfg.build.bpe_vocab_size,
            "tasks": [t.fingerprint() for t in tasks]}


def build(cfg, tasks: Sequence):
    """The built-in tokenizer for a preset teacher, trained on the tasks' text."""
    if recipe(cfg, tasks)["tokenizer"] == "word":
        words: list[str] = []
        for t in tasks:
            words += t.vocabulary()
        return M.build_word_tokenizer(words)
    texts: list[str] = []
    for t in tasks:
        texts += t.tokenizer_texts()
    return M.build_bpe_tokenizer(texts, cfg.build.bpe_vocab_size)


def describe(cfg, tasks: Sequence) -> str:
    if not M.is_preset(cfg.teacher):
        return f"the teacher's ({cfg.teacher})"
    if recipe(cfg, tasks)["tokenizer"] == "word":
        return "word-level over the tasks' vocabulary (built in memory, not saved)"
    return f"byte-level BPE {cfg.build.bpe_vocab_size} trained on the tasks' text (in memory, not saved)"


def student_recipe(cfg, tasks: Sequence) -> dict | None:
    """What determines a preset student's own tokenizer (build.student_tokenizer), None when students
    use the shared one."""
    if cfg.build.student_tokenizer == "same":
        return None
    return {"tokenizer": "bpe", "bpe_vocab": cfg.build.student_bpe_vocab_size, "role": "student",
            "tasks": [t.fingerprint() for t in tasks]}


def build_student(cfg, tasks: Sequence):
    """A preset student's own tokenizer: byte-level BPE trained on the tasks' text (its words split
    into subwords when the vocabulary is small), for cross-tokenizer distillation."""
    texts: list[str] = []
    for t in tasks:
        texts += t.tokenizer_texts()
    return M.build_bpe_tokenizer(texts, cfg.build.student_bpe_vocab_size)
