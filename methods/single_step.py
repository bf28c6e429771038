"""Single-step reverse KL (MiniLLM's "Alternative #1"): only the single-step part of the gradient.

Data source: the current student's own samples, drawn fresh for every optimizer step (on-policy).
Divergence: the exact full-vocabulary reverse KL, sum_v q (log q - log p), at every response
position of those samples. Update rule: plain gradient descent on that token-mean.

This is MiniLLM without the long-range (policy-gradient) term, without teacher-mixed sampling and
without the pretraining loss; it equals GKD with lambda = 1, beta = 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from kdbench.method import reverse_kl, METHODS, Method, MethodConfig, MethodContext, LossOutput



@dataclass
class SingleStepConfig(MethodConfig):
    pass  # sampling follows ctx.sampling (MiniLLM's T=1, top-p 1, top-k 0); budget in TrainConfig


@METHODS.register("single_step")
class SingleStep(Method):
    description = "MiniLLM alternative #1: token-level reverse KL on fresh student samples (on-policy)"
    Config = SingleStepConfig
    requires_teacher = True
    student_init = "sft"  # as MiniLLM: sampling from the base model would give off-task text
    budget = "on_policy"  # samples the student every step (preset budget_train.on_policy)

    def train(self, ctx: MethodContext) -> None:
        def loss_fn(batch):
            rkl = ctx.divergence(reverse_kl, ctx.outputs(ctx.student, batch), ctx.teacher_outputs(batch), batch.loss_mask)
            return LossOutput(rkl, {"rkl": rkl.item()})

        ctx.fit(loss_fn, ctx.policy_batches("student"))  # a fresh rollout every step
