"""Word-level KD: (1 - r) * CE(gold) + r * forward KL(teacher || student), full vocabulary.

MiniLLM's `--type kd` with kd_ratio r = 0.5 and no temperature. Upstream uses the soft
cross-entropy -sum p log q, which differs from forward KL by the teacher entropy (a constant for
the student), so gradients are identical; we log the true KL.

The teacher cache (train.teacher_cache: topk, kdbench/teacher_store.py) serves the teacher's
distributions on these fixed responses from a stage built once. The method-level
`teacher_cache: topk` / `topk: k` still work but are deprecated: they turn the same cache on for this
method only (train.teacher_cache / train.teacher_cache_k, or method_train.kd, is the setting).
"""
from __future__ import annotations

from dataclasses import dataclass

from kdbench.method import (forward_kl, METHODS, Method, MethodConfig, MethodContext, check_choice, check_range,
                            LossOutput)



@dataclass
class KDConfig(MethodConfig):
    kd_ratio: float = 0.5  # MiniLLM scripts: --kd-ratio 0.5
    temperature: float = 1.0  # MiniLLM uses none (1.0); Hinton-style T scales the loss by T^2
    teacher_cache: str = "none"  # deprecated (use train.teacher_cache): topk turns the cache on for kd
    topk: int = 64  # deprecated (use train.teacher_cache_k): k of that cache

    def __post_init__(self) -> None:
        check_range("kd_ratio", self.kd_ratio, 0.0, 1.0, "kd")
        check_range("temperature", self.temperature, 1e-3, 100.0, "kd")
        check_choice("teacher_cache", self.teacher_cache, ("none", "topk"), "kd")
        check_range("topk", self.topk, 1, 10**7, "kd")


@METHODS.register("kd")
class KD(Method):
    description = "word-level KD: 0.5 CE + 0.5 forward KL to the teacher on gold responses"
    Config = KDConfig
    requires_teacher = True

    def reads_teacher_cache(self) -> bool:
        return self.config.temperature == 1.0  # a tempered top-k teacher would inflate its flat tail

    def train(self, ctx: MethodContext) -> None:
        r, T = self.config.kd_ratio, self.config.temperature
        if self.config.teacher_cache == "topk" and ctx.train_cfg.teacher_cache == "full":
            ctx.log.warning("method_config.kd.teacher_cache=topk (deprecated) is ignored: train.teacher_cache=full "
                            "already gives the exact teacher")
        elif self.config.teacher_cache == "topk" and self.reads_teacher_cache():
            ctx.log.warning("method_config.kd.teacher_cache is deprecated: set train.teacher_cache=topk and "
                            "train.teacher_cache_k (e.g. method_train.kd) instead; using k=%d", self.config.topk)
            ctx.enable_teacher_cache(self.config.topk)

        def loss_fn(batch):
            s = ctx.outputs(ctx.student, batch)
            t = ctx.teacher_outputs(batch)  # the teacher cache's, when it is on
            # Hinton's T^2 keeps the soft term's gradient scale; both terms from one lm_head pass
            loss, ce, kl = ctx.ce_and_divergence(forward_kl, s, t, batch.labels, batch.loss_mask, ce_weight=1 - r,
                                                 div_weight=r * T * T, temperature=T)
            return LossOutput(loss, {"ce": float(ce), "fkl": float(kl) * T * T})

        # gold train responses, plus the teacher's samples on prompts without gold (if the run has them)
        ctx.fit(loss_fn, ctx.gold_batches(ctx.guided_examples()))
