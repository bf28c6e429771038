"""Word-level KD: (1 - r) * CE(gold) + r * forward KL(teacher || student), full vocabulary.

MiniLLM's `--type kd` with kd_ratio r = 0.5 and no temperature. Upstream uses the soft
cross-entropy -sum p log q, which differs from forward KL by the teacher entropy (a constant for
the student), so gradients are identical; we log the true KL.
"""
from __future__ import annotations

from dataclasses import dataclass

from kdbench.divergences import forward_kl
from kdbench.method import METHODS, Method, MethodConfig, MethodContext, check_range, cross_entropy
from kdbench.trainer import LossOutput


@dataclass
class KDConfig(MethodConfig):
    kd_ratio: float = 0.5  # MiniLLM scripts: --kd-ratio 0.5
    temperature: float = 1.0  # MiniLLM uses none (1.0); Hinton-style T scales the loss by T^2

    def __post_init__(self) -> None:
        check_range("kd_ratio", self.kd_ratio, 0.0, 1.0, "kd")
        check_range("temperature", self.temperature, 1e-3, 100.0, "kd")


@METHODS.register("kd")
class KD(Method):
    description = "word-level KD: 0.5 CE + 0.5 forward KL to the teacher on gold responses"
    Config = KDConfig
    requires_teacher = True

    def train(self, ctx: MethodContext) -> None:
        r, T = self.config.kd_ratio, self.config.temperature

        def loss_fn(batch):
            s = ctx.logits(ctx.student, batch)
            t = ctx.teacher_logits(batch)
            ce = cross_entropy(s, batch.labels)
            kl = forward_kl(s / T, t / T, batch.loss_mask) * (T * T)
            return LossOutput((1 - r) * ce + r * kl, {"ce": float(ce), "fkl": float(kl)})

        ctx.fit(loss_fn, ctx.gold_batches())
