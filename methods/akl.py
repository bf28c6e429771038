"""AKL (Wu et al., COLING 2025, arXiv 2404.02657): adaptive Kullback-Leibler divergence.

Data source: the fixed gold responses; the student starts from its base model. The official code
(wutaiqiang/LLM_KD_AKL, AKL.py) is a drop-in for the distillation loss of MiniLLM's finetune.py
(its README points at finetune.py:166), so the rest is MiniLLM's word-level KD setting, as our `kd`.

Divergence: `kdbench.divergences.akl`, per response token (AKL.py get_ratio / get_kl):
AKL = (g_H * FKL + g_T * RKL) / (g_H + g_T). The head H is the teacher's top-1 plus every token
whose cumulative sorted teacher mass is <= mu; the tail is the rest. g_H and g_T sum |p - sg(q)|
over each part, so early in training (large tail errors) RKL dominates and FKL fits the head.

Update rule: gradient descent on (1 - kd_ratio) * CE + kd_ratio * AKL, token mean, with MiniLLM's
kd scripts' ratio 0.5 (scripts/gpt2/kd/kd_*.sh --kd-ratio 0.5), the loss AKL replaces.

Deviations from AKL.py: where q = p exactly the weights are 0/0 (NaN upstream); we use 1/2 (both
KLs and their gradients are 0 there, so the value is exact). Upstream sets +-inf logits to 0 before
the softmax that builds the weights; we use the model's probabilities (a -inf logit is
probability 0). AKL.py is a snippet (no imports, an undefined `no_model_batch`); TAID's
re-implementation (adaptive_kl.py:31-38) differs (sorted mask applied to unsorted gaps, crossing
token in the head, q not detached), and we follow AKL.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from kdbench.method import METHODS, LossOutput, Method, MethodConfig, MethodContext, akl, check_range, cross_entropy


@dataclass
class AKLConfig(MethodConfig):
    mu: float = 0.5  # head threshold: AKL.py:1 get_ratio(mu=0.5); TAID arguments.py adaptive_kl_threshold 0.5
    kd_ratio: float = 0.5  # MiniLLM kd scripts --kd-ratio 0.5 (the finetune.py loss AKL replaces)

    def __post_init__(self) -> None:
        check_range("mu", self.mu, 0.0, 1.0, "akl")
        check_range("kd_ratio", self.kd_ratio, 0.0, 1.0, "akl")


@METHODS.register("akl")
class AKL(Method):
    description = "AKL: adaptive FKL/RKL mix weighted by head/tail errors (mu 0.5), 0.5 CE + 0.5 AKL on gold"
    Config = AKLConfig
    requires_teacher = True

    def train(self, ctx: MethodContext) -> None:
        cfg = self.config

        def loss_fn(batch):
            s = ctx.logits(ctx.student, batch)
            d = akl(s, ctx.teacher_logits(batch), batch.loss_mask, mu=cfg.mu)
            ce = cross_entropy(s, batch.labels)
            return LossOutput(cfg.kd_ratio * d + (1 - cfg.kd_ratio) * ce, {"akl": d.item(), "ce": ce.item()})

        ctx.fit(loss_fn, ctx.gold_batches())
