"""Token-level total variation distillation: 0.5 * sum_v |p - q| (DistiLLM's `tvd` loss).

Data source (config `data`): the student's own samples, drawn fresh each optimizer step (default,
on-policy), the gold responses, or the cached teacher samples. Divergence:
`kdbench.divergences.tvd` over the full vocabulary. Update rule: gradient descent on the
token-mean. TVD is symmetric and bounded in [0, 1]; its gradient does not blow up where either
distribution is near zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from kdbench.method import tvd, DATA_SOURCES, METHODS, Method, MethodConfig, MethodContext, check_choice, LossOutput



@dataclass
class TVDConfig(MethodConfig):
    data: str = "student"  # student (on-policy samples) | gold (train responses) | teacher (cached samples)

    def __post_init__(self) -> None:
        check_choice("data", self.data, DATA_SOURCES, "tvd")


@METHODS.register("tvd")
class TVD(Method):
    description = "token-level total variation distance to the teacher; on-policy student samples by default"
    Config = TVDConfig
    requires_teacher = True
    student_init = "sft"  # on-policy sampling needs an on-task student (MiniLLM/DistiLLM start from SFT)
    budget = "on_policy"  # samples the student every step (preset budget_train.on_policy)

    def train(self, ctx: MethodContext) -> None:
        def loss_fn(batch):
            d = ctx.divergence(tvd, ctx.outputs(ctx.student, batch), ctx.teacher_outputs(batch), batch.loss_mask)
            return LossOutput(d, {"tvd": d.item()})

        ctx.fit(loss_fn, ctx.policy_batches(self.config.data))
