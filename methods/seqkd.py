"""SeqKD: supervised training on the teacher's own samples (Kim & Rush 2016; MiniLLM's baseline).

Data source: one teacher sample per train prompt, generated once by the engine, cached and shared
with every method that asks for them (`ctx.teacher_samples()`). Update rule: cross-entropy.

The MiniLLM paper describes SeqKD as pure SFT on teacher outputs; its scripts also keep a 0.5
word-level KD term (`finetune.py --type kd --kd-ratio 0.5` on the pseudo data). We follow the paper
and make the KD mix an explicit, default-off `kd_ratio` (set 0.5 to reproduce the scripts).
"""
from __future__ import annotations

from dataclasses import dataclass
from kdbench.method import (forward_kl, METHODS, Method, MethodConfig, MethodContext, check_range, LossOutput)



@dataclass
class SeqKDConfig(MethodConfig):
    kd_ratio: float = 0.0  # paper: pure SFT on teacher samples; LMOps seqkd scripts: 0.5

    def __post_init__(self) -> None:
        check_range("kd_ratio", self.kd_ratio, 0.0, 1.0, "seqkd")


@METHODS.register("seqkd")
class SeqKD(Method):
    description = "SeqKD: SFT on teacher samples (cached, one per train prompt); optional word-level KD mix"
    Config = SeqKDConfig
    requires_teacher = True

    def reads_teacher_cache(self) -> bool:
        return True  # its word-level part is forward KL at temperature 1

    def train(self, ctx: MethodContext) -> None:
        r = self.config.kd_ratio
        data = ctx.teacher_samples()  # examples whose target is the teacher's sample

        def loss_fn(batch):
            s = ctx.outputs(ctx.student, batch)
            if r == 0.0:  # pure SeqKD: no teacher forward pass at all
                ce = ctx.cross_entropy(s, batch.labels)
                return LossOutput(ce, {"ce": ce.item()})
            loss, ce, kl = ctx.ce_and_divergence(forward_kl, s, ctx.teacher_outputs(batch), batch.labels,
                                                 batch.loss_mask, ce_weight=1 - r, div_weight=r)
            return LossOutput(loss, {"ce": ce.item(), "fkl": kl.item()})

        ctx.fit(loss_fn, ctx.gold_batches(data))
