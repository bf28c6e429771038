"""Word-level KD: (1 - r) * CE(gold) + r * forward KL(teacher || student), full vocabulary.

MiniLLM's `--type kd` with kd_ratio r = 0.5 and no temperature. Upstream uses the soft
cross-entropy -sum p log q, which differs from forward KL by the teacher entropy (a constant for
the student), so gradients are identical; we log the true KL.

`teacher_cache: topk` reads the teacher from a top-k cache built once over the training set
(kdbench/teacher_cache.py: k log-probs + the remaining mass, its error documented there) instead of
a teacher forward per step: cheaper when the run covers the training set more than about once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from kdbench.method import (forward_kl, METHODS, Method, MethodConfig, MethodContext, check_choice, check_range,
                            LazyLogits, LossOutput)



@dataclass
class KDConfig(MethodConfig):
    kd_ratio: float = 0.5  # MiniLLM scripts: --kd-ratio 0.5
    temperature: float = 1.0  # MiniLLM uses none (1.0); Hinton-style T scales the loss by T^2
    teacher_cache: str = "none"  # none: teacher forward every step | topk: cached top-k distributions
    topk: int = 64  # k of the top-k cache

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

    def train(self, ctx: MethodContext) -> None:
        r, T = self.config.kd_ratio, self.config.temperature

        # gold train responses, plus the teacher's samples on prompts without gold (if the run has them)
        data = ctx.guided_examples()
        cache = ctx.teacher_topk_cache(self.config.topk, data) if self.config.teacher_cache == "topk" else None

        def teacher(batch):
            if cache is None:
                return ctx.teacher_outputs(batch)
            ids = [data[i].id for i in batch.extras["example_index"].tolist()]
            return LazyLogits.dense(cache.teacher_logp(batch, ids).to(ctx.device))  # log-probs act as logits

        def cached_batches():
            # the same example order as gold_batches(), with each row's index for the cache lookup
            pos = {id(ex): i for i, ex in enumerate(data)}
            for exs in ctx.example_batches(data):
                b = ctx.encode(exs)
                b.extras["example_index"] = torch.tensor([pos[id(ex)] for ex in exs])
                yield b

        def loss_fn(batch):
            s = ctx.outputs(ctx.student, batch)
            t = teacher(batch)
            ce = ctx.cross_entropy(s, batch.labels)
            kl = ctx.divergence(forward_kl, s, t, batch.loss_mask, temperature=T) * (T * T)
            return LossOutput((1 - r) * ce + r * kl, {"ce": float(ce.detach()), "fkl": float(kl.detach())})

        ctx.fit(loss_fn, cached_batches() if cache is not None else ctx.gold_batches(data))
