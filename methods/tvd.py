"""Token-level total variation distillation: 0.5 * sum_v |p - q| (DistiLLM's `tvd` loss).

Data source (config `data`): the student's own samples, drawn fresh each optimizer step (default,
on-policy), the gold responses, or the cached teacher samples. Divergence:
`kdbench.divergences.tvd` over the full vocabulary. Update rule: gradient descent on the
token-mean. TVD is symmetric and bounded in [0, 1]; its gradient does not blow up where either
distribution is near zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from kdbench.data import Batch
from kdbench.divergences import tvd
from kdbench.errors import ConfigError
from kdbench.method import METHODS, Method, MethodConfig, MethodContext
from kdbench.trainer import LossOutput

DATA_SOURCES = ("student", "gold", "teacher")


@dataclass
class TVDConfig(MethodConfig):
    data: str = "student"  # student (on-policy samples) | gold (train responses) | teacher (cached samples)

    def __post_init__(self) -> None:
        if self.data not in DATA_SOURCES:
            raise ConfigError(f"config key 'method_config.tvd.data': '{self.data}' is not one of "
                              f"{', '.join(DATA_SOURCES)}")


def train_batches(ctx: MethodContext, source: str) -> Iterator[Batch]:
    """One Batch per optimizer step from the chosen data source."""
    if source == "gold":
        return ctx.gold_batches()
    if source == "teacher":
        return ctx.gold_batches(ctx.teacher_samples())

    def student() -> Iterator[Batch]:  # fresh samples from the current student every step
        for k, exs in enumerate(ctx.example_batches()):
            yield ctx.rollout_batch(ctx.sample(ctx.student, exs, seed=ctx.train_cfg.seed + 7919 * (k + 1)))

    return student()


@METHODS.register("tvd")
class TVD(Method):
    description = "token-level total variation distance to the teacher; on-policy student samples by default"
    Config = TVDConfig
    requires_teacher = True
    student_init = "sft"  # on-policy sampling needs an on-task student (MiniLLM/DistiLLM start from SFT)

    def train(self, ctx: MethodContext) -> None:
        def loss_fn(batch):
            d = tvd(ctx.logits(ctx.student, batch), ctx.teacher_logits(batch), batch.loss_mask)
            return LossOutput(d, {"tvd": d.item()})

        ctx.fit(loss_fn, train_batches(ctx, self.config.data))
