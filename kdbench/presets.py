"""Benchmark presets: named overrides of BenchConfig. Later config sources override them."""
from __future__ import annotations

from .registry import Registry

PRESETS: Registry[dict] = Registry("preset")

_TOY_LENGTHS = {"max_length": 48, "max_prompt_length": 24}

PRESETS.add("ci", {
    **_TOY_LENGTHS,
    "teacher": "gpt2-toy-s", "students": ["gpt2-toy-xs"], "methods": ["sft", "kd"], "tasks": ["toy"],
    "task_options": {"toy": {"n_creatures": 16, "n_train": 600, "n_dev": 28, "n_test": 42, "pretrain_docs": 600}},
    "build": {"teacher_pretrain": {"steps": 60, "batch_size": 32, "lr": 3e-3, "warmup_steps": 10, "log_every": 20},
              "student_pretrain": {"steps": 30, "batch_size": 32, "lr": 3e-3, "warmup_steps": 5, "log_every": 10}},
    "teacher_sft": {"steps": 60, "batch_size": 32, "lr": 3e-3, "warmup_steps": 5, "log_every": 20},
    "distill": {"steps": 30, "batch_size": 16, "lr": 3e-3, "warmup_steps": 0, "log_every": 10},
    "eval": {"seeds": [10, 20], "max_new_tokens": 24, "max_prompt_tokens": 24, "batch_size": 64,
             "coverage_samples": 4},
}, "smallest run that exercises every stage (plumbing, not quality; < 2 min on 2 CPU cores)")

PRESETS.add("tiny", {
    **_TOY_LENGTHS,
    "teacher": "gpt2-toy-m", "students": ["gpt2-toy-s"], "methods": ["sft", "kd"], "tasks": ["toy"],
    "build": {"teacher_pretrain": {"steps": 500, "batch_size": 32, "lr": 1e-3, "warmup_steps": 50, "log_every": 50},
              "student_pretrain": {"steps": 300, "batch_size": 32, "lr": 2e-3, "warmup_steps": 30, "log_every": 50}},
    "teacher_sft": {"steps": 700, "batch_size": 32, "lr": 1e-3, "warmup_steps": 30, "log_every": 50},
    "distill": {"steps": 500, "batch_size": 32, "lr": 2e-3, "warmup_steps": 20, "log_every": 50},
    "eval": {"seeds": [10, 20, 30], "max_new_tokens": 24, "max_prompt_tokens": 24, "batch_size": 64},
}, "default: toy world, 1M teacher, 0.1M student, sft+kd, 3 seeds (~5-8 min on 2 CPU cores)")
