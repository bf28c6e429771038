"""Task adapters: where examples come from, their splits, template and metrics.

A task is one file in tasks/ that subclasses `Task` and registers itself:

    @TASKS.register("mytask")
    class MyTask(Task):
        description = "..."
        def load_split(self, split): return [Example(...), ...]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from .registry import Registry
from .schema import Example

TASKS: Registry[type["Task"]] = Registry("task")

SPLITS = ("train", "dev", "test")


TRAINING_SPLITS = ("train", "unlabeled")


@dataclass
class TaskOptions:
    """Settings the runner passes to every task (from the benchmark config)."""

    data_dir: str | None = None
    max_eval_examples: int | None = None  # cap on dev/test examples (presets use small caps)
    max_train_examples: int | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)  # task-specific settings (BenchConfig.task_options[name])
    # BenchConfig.prompt_format and the function that applies it to every rendered prompt (None: as is)
    prompt_format: str = "plain"
    prompt_wrapper: Callable[[Example], str] | None = None


class Task:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[int] = 1
    # Metrics computed on this task unless the benchmark overrides them.
    default_metrics: ClassVar[tuple[str, ...]] = ("rouge_l",)
    # The metric a task is judged by first: checkpoint selection on dev, tuning, the claims' "primary metric".
    primary_metric: ClassVar[str] = "rouge_l"
    # Which splits exist; a pure eval set has only "test".
    splits: ClassVar[tuple[str, ...]] = ("test",)

    def __init__(self, options: TaskOptions | None = None):
        self.options = options or TaskOptions()
        self._cache: dict[str, list[Example]] = {}

    # -- to implement -------------------------------------------------------------------------
    def load_split(self, split: str) -> list[Example]:
        raise NotImplementedError

    # -- optional hooks -----------------------------------------------------------------------
    def pretrain_texts(self) -> list[str] | None:
        """Plain text of the task's world for pretraining / the LM loss term (None if absent)."""
        return None

    def tokenizer_texts(self) -> list[str]:
        """Text a built-in tokenizer is trained on (default: prompts and references)."""
        out: list[str] = []
        for split in self.splits:
            for ex in self.examples(split):
                out.append(ex.prompt)
                out.extend(ex.references)
        return out + list(self.pretrain_texts() or [])

    def check(self, example: Example, response: str) -> dict | None:
        """Exact checker (toy world): {'valid': bool, 'mode': str|None}; None if not checkable."""
        return None

    def fingerprint(self) -> dict:
        """What determines this task's data (hashed into cache keys)."""
        fp = {"task": self.name, "version": self.version, "data_dir": self.options.data_dir,
              "max_eval": self.options.max_eval_examples, "max_train": self.options.max_train_examples,
              "extra": self.options.extra}
        if self.options.prompt_format != "plain":  # only then: existing cache keys stay valid
            fp["prompt_format"] = self.options.prompt_format
        return fp

    # -- provided -----------------------------------------------------------------------------
    def examples(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise ValueError(f"task '{self.name}' has no split '{split}'; it has {list(self.splits)}")
        if split not in self._cache:
            exs = self.load_split(split)
            # "unlabeled" prompts are training data: capped like the train split, not like evaluation
            cap = self.options.max_train_examples if split in TRAINING_SPLITS else self.options.max_eval_examples
            if cap is not None:
                exs = exs[:cap]
            if self.options.prompt_wrapper is not None:
                exs = [dataclasses.replace(ex, prompt=self.options.prompt_wrapper(ex)) for ex in exs]
            self._cache[split] = exs
        return self._cache[split]

    @property
    def has_train(self) -> bool:
        return "train" in self.splits


def make_task(name: str, options: TaskOptions | None = None, where: str = "--tasks") -> Task:
    cls = TASKS.get(name, where)
    task = cls(options)
    return task
