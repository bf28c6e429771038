"""FKL: token-level forward KL to the teacher on gold responses, from the SFT student, no CE term.

The FKL baseline of the ABKD and DistiLLM papers: their codebase's `--type kd` (finetune.py:192
`forward_kl`) run with --kd-ratio 1.0 from the `init` SFT student (ghwang-s/abkd
scripts/gpt2/kd/kd_base.sh:18, 62). It differs from our `kd` (MiniLLM's word-level KD: 0.5 CE +
0.5 FKL from the base student) in those two settings, and from `abkd` and `akl` only in the
divergence, which makes it the baseline of their "beats FKL" claims.

Data source: gold responses. Divergence: `kdbench.divergences.forward_kl`. Update rule: gradient
descent on (1 - kd_ratio) * CE + kd_ratio * FKL, token mean.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kdbench.method import (METHODS, LossOutput, Method, MethodConfig, MethodContext, check_range, forward_kl)


@dataclass
class FKLConfig(MethodConfig):
    kd_ratio: float = 1.0  # scripts/gpt2/kd/kd_base.sh:62 --kd-ratio 1.0 (ABKD / DistiLLM codebase)
    method: ClassVar[str] = "fkl"  # for error messages (methods/rkl.py reuses this config)

    def __post_init__(self) -> None:
        check_range("kd_ratio", self.kd_ratio, 0.0, 1.0, self.method)


@METHODS.register("fkl")
class FKL(Method):
    description = "forward KL to the teacher on gold responses, from SFT, no CE (ABKD/DistiLLM's FKL baseline)"
    Config = FKLConfig
    requires_teacher = True
    student_init = "sft"  # kd_base.sh:18 distils the `init` (SFT) student
    divergence = staticmethod(forward_kl)  # methods/rkl.py swaps in reverse_kl, nothing else
    term = "fkl"  # the divergence's name in the logs

    def divergence_kwargs(self) -> dict:
        """The divergence's hyperparameters from the config (abkd: alpha, beta; akl: mu)."""
        return {}

    def reads_teacher_cache(self) -> bool:
        return self.divergence is forward_kl  # rkl, abkd, akl (subclasses) weight the tail by the student

    def train(self, ctx: MethodContext) -> None:
        r, term, kw = self.config.kd_ratio, self.term, self.divergence_kwargs()

        def loss_fn(batch):
            s = ctx.outputs(ctx.student, batch)
            if r == 1:
                d = ctx.divergence(self.divergence, s, ctx.teacher_outputs(batch), batch.loss_mask, **kw)
                return LossOutput(d, {term: d.item()})
            loss, ce, d = ctx.ce_and_divergence(self.divergence, s, ctx.teacher_outputs(batch), batch.labels,
                                                batch.loss_mask, ce_weight=1 - r, div_weight=r, **kw)
            return LossOutput(loss, {term: d.item(), "ce": ce.item()})

        ctx.fit(loss_fn, ctx.gold_batches())
