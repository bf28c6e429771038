"""RKL: token-level reverse KL to the teacher on gold responses, from the SFT student, no CE term.

The RKL baseline of the ABKD and DistiLLM papers: their codebase's `--type rkl` (finetune.py:194
`reverse_kl`), in the setting of its `--type kd` runs: --kd-ratio 1.0 from the `init` SFT student
(ghwang-s/abkd scripts/gpt2/kd/kd_base.sh:18, 62). It is our `fkl` with the divergence reversed,
and differs from `abkd` and `akl` only in the divergence: the baseline of their "beats RKL" claims.
Unlike `single_step` (MiniLLM's token-level RKL) it trains on gold responses, not student samples.

Data source: gold responses. Divergence: `kdbench.divergences.reverse_kl`. Update rule: gradient
descent on (1 - kd_ratio) * CE + kd_ratio * RKL, token mean.
"""
from __future__ import annotations

from dataclasses import dataclass

from kdbench.method import (METHODS, LossOutput, Method, MethodConfig, MethodContext, check_range, reverse_kl)


@dataclass
class RKLConfig(MethodConfig):
    kd_ratio: float = 1.0  # scripts/gpt2/kd/kd_base.sh:62 --kd-ratio 1.0 (ABKD / DistiLLM codebase, as for fkl)

    def __post_init__(self) -> None:
        check_range("kd_ratio", self.kd_ratio, 0.0, 1.0, "rkl")


@METHODS.register("rkl")
class RKL(Method):
    description = "reverse KL to the teacher on gold responses, from SFT, no CE (ABKD/DistiLLM's RKL baseline)"
    Config = RKLConfig
    requires_teacher = True
    student_init = "sft"  # kd_base.sh:18 distils the `init` (SFT) student

    def train(self, ctx: MethodContext) -> None:
        r = self.config.kd_ratio

        def loss_fn(batch):
            s = ctx.outputs(ctx.student, batch)
            d = ctx.divergence(reverse_kl, s, ctx.teacher_outputs(batch), batch.loss_mask)
            if r == 1:
                return LossOutput(d, {"rkl": d.item()})
            ce = ctx.cross_entropy(s, batch.labels)
            return LossOutput(r * d + (1 - r) * ce, {"rkl": d.item(), "ce": ce.item()})

        ctx.fit(loss_fn, ctx.gold_batches())
