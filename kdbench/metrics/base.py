"""Metric registry and the context a metric is computed from.

A metric is a function `fn(ctx: EvalContext) -> float | dict[str, float] | None` registered with
its name, version, direction and how it aggregates over seeds. Returning None means "does not
apply here" (e.g. validity on a task with no checker); a dict lets one metric report several
named values (e.g. ECE plus accuracy). Generation metrics read `ctx.predictions`; model metrics
use `ctx.model` / `ctx.teacher` / `ctx.tokenizer`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..registry import Registry
from ..schema import Example


@dataclass
class EvalContext:
    task: Any  # kdbench.task.Task
    examples: list[Example]
    predictions: list[str]  # one sampled response per example for this seed
    seed: int
    model: Any = None  # the evaluated model (torch.nn.Module) or None
    tokenizer: Any = None
    teacher: Any = None  # prefer get_teacher(): the teacher is loaded lazily, only if a metric needs it
    teacher_fn: Optional[Callable] = None
    model_label: str = ""
    eval_config: Any = None  # kdbench.config.EvalConfig
    sample_fn: Optional[Callable] = None  # sample_fn(prompts, n_per_prompt, seed) -> list[list[str]]
    sampling: Any = None  # kdbench.sampling.SamplingConfig of this evaluation (metrics that sample reuse it)
    artifacts: dict[str, Any] = field(default_factory=dict)  # metrics may leave per-cell data here
    cache: dict[str, Any] = field(default_factory=dict)  # shared between metrics of one cell
    settings: dict[str, Any] = field(default_factory=dict)  # BenchConfig sections metrics read (e.g. judge)

    def get_teacher(self):
        """The teacher model (None when the benchmark has none); loaded on first use."""
        if self.teacher is None and self.teacher_fn is not None:
            self.teacher = self.teacher_fn()
        return self.teacher


@dataclass
class Metric:
    name: str
    fn: Callable[[EvalContext], Any]
    version: int = 1
    higher_is_better: bool = True
    aggregate: str = "mean"  # how values over seeds combine: mean (reported with std and n)
    kind: str = "generation"  # generation | model
    description: str = ""
    # For metrics that return a dict: direction of each sub-value (default: higher_is_better).
    sub_directions: dict[str, bool] = field(default_factory=dict)

    def direction(self, value_name: str) -> bool:
        return self.sub_directions.get(value_name, self.higher_is_better)


METRICS: Registry[Metric] = Registry("metric")


def register_metric(name: str, *, version: int = 1, higher_is_better: bool = True, kind: str = "generation",
                    description: str = "", aggregate: str = "mean",
                    sub_directions: dict[str, bool] | None = None):
    def deco(fn):
        METRICS.add(name, Metric(name=name, fn=fn, version=version, higher_is_better=higher_is_better,
                                 aggregate=aggregate, kind=kind,
                                 description=description or (fn.__doc__ or "").strip().splitlines()[0],
                                 sub_directions=sub_directions or {}),
                    description or (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return deco
