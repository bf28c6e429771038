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
from kdbench.method import (js, DATA_SOURCES, METHODS, Method, MethodConfig, MethodContext, check_choice,
                            check_range, LossOutput)



@dataclass
class JSConfig(MethodConfig):
    beta: float = 0.5  # symmetric JS
    data: str = "student"  # student (on-policy samples) | gold (train responses) | teacher (cached samples)

    def __post_init__(self) -> None:
        check_range("beta", self.beta, 0.0, 1.0, "js")
        check_choice("data", self.data, DATA_SOURCES, "js")


@METHODS.register("js")
class JS(Method):
    description = "token-level Jensen-Shannon (beta 0.5) to the teacher; on-policy student samples by default"
    Config = JSConfig
    requires_teacher = True
    student_init = "sft"  # on-policy sampling needs an on-task student (MiniLLM/DistiLLM start from SFT)
    budget = "on_policy"  # samples the student every step (preset budget_train.on_policy)

    def train(self, ctx: MethodContext) -> None:
        beta = self.config.beta

        def loss_fn(batch):
            d = ctx.divergence(js, ctx.outputs(ctx.student, batch), ctx.teacher_outputs(batch), batch.loss_mask, beta=beta)
            return LossOutput(d, {"js": d.item()})

        ctx.fit(loss_fn, ctx.policy_batches(self.config.data))
