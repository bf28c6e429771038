"""SFT without KD: cross-entropy on the gold response tokens only (MiniLLM's `--type lm`)."""
from __future__ import annotations

from dataclasses import dataclass
from kdbench.method import METHODS, Method, MethodConfig, MethodContext, LossOutput



@dataclass
class SFTConfig(MethodConfig):
    pass  # the budget (lr, steps, batch) lives in the TrainConfig shared by all methods


@METHODS.register("sft")
class SFT(Method):
    description = "SFT w/o KD: cross-entropy on gold responses (no teacher)"
    Config = SFTConfig
    requires_teacher = False
    shared_stage = True  # its student is the cached SFT stage (kdbench.stages.student_sft)

    def train(self, ctx: MethodContext) -> None:
        def loss_fn(batch):
            return LossOutput(ctx.cross_entropy(ctx.outputs(ctx.student, batch), batch.labels))

        ctx.fit(loss_fn, ctx.gold_batches())
