"""Token-level Jensen-Shannon distillation: beta*KL(p||m) + (1-beta)*KL(q||m), m = beta*p + (1-beta)*q.

Data source (config `data`): the student's own samples, drawn fresh each optimizer step (default,
on-policy, as DistiLLM's student-generated-output runs and GKD), the gold responses, or the cached
teacher samples. Divergence: `kdbench.divergences.js` over the full vocabulary. Update rule:
gradient descent on the token-mean. JS is bounded (by ln 2 at beta = 0.5) and sits between the
mode-covering forward KL and the mode-seeking reverse KL.

beta = 0.5 is the symmetric JS divergence. DistiLLM's `jsd` (lambda = 0.9, its GKD baseline) is
beta = 0.1 here; see also the `gkd` method for GKD's generalised JSD with an on-policy fraction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from kdbench.data import Batch
from kdbench.divergences import js
from kdbench.errors import ConfigError
from kdbench.method import METHODS, Method, MethodConfig, MethodContext, check_range
from kdbench.trainer import LossOutput

DATA_SOURCES = ("student", "gold", "teacher")


@dataclass
class JSConfig(MethodConfig):
    beta: float = 0.5  # symmetric JS
    data: str = "student"  # student (on-policy samples) | gold (train responses) | teacher (cached samples)

    def __post_init__(self) -> None:
        check_range("beta", self.beta, 0.0, 1.0, "js")
        if self.data not in DATA_SOURCES:
            raise ConfigError(f"config key 'method_config.js.data': '{self.data}' is not one of "
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


@METHODS.register("js")
class JS(Method):
    description = "token-level Jensen-Shannon (beta 0.5) to the teacher; on-policy student samples by default"
    Config = JSConfig
    requires_teacher = True
    student_init = "sft"  # on-policy sampling needs an on-task student (MiniLLM/DistiLLM start from SFT)

    def train(self, ctx: MethodContext) -> None:
        beta = self.config.beta

        def loss_fn(batch):
            d = js(ctx.logits(ctx.student, batch), ctx.teacher_logits(batch), batch.loss_mask, beta=beta)
            return LossOutput(d, {"js": d.item()})

        ctx.fit(loss_fn, train_batches(ctx, self.config.data))
