"""GKD: generalized knowledge distillation (Agarwal et al., ICLR 2024), as in TRL's GKDTrainer.

Data source: at every optimizer step one uniform draw decides the batch. With probability `lmbda`
the batch is the current student's own samples for the step's prompts (on-policy); otherwise it is
the gold responses (or, with `seq_kd`, the cached teacher samples). Divergence: the generalized
JSD(beta) over the full vocabulary (`kdbench.divergences.generalized_jsd`; beta = 0 forward KL,
beta = 1 reverse KL, in between beta*KL(p||M) + (1-beta)*KL(q||M), M = beta*p + (1-beta)*q).
Update rule: gradient descent on the token-mean; no cross-entropy term (TRL's non-Liger path).

Defaults are TRL's `GKDConfig` (lmbda 0.5, beta 0.5, sampling temperature 0.9, seq_kd off,
dropout disabled). With `seq_kd`, an off-policy step draws a fresh teacher sample for each of its
prompts at the same temperature, as TRL's `training_step` does (`seq_kd_source: fresh`, default);
`seq_kd_source: cached` reuses the run's one cached teacher sample per prompt (SeqKD's data, drawn
at the evaluation temperature, T = 1): cheaper, but not TRL's GKD, so the choice is in the cell's key. The temperature only shapes on-policy generation, never the loss. TRL draws
once per micro-batch; we draw once per optimizer step so that gradient accumulation does not
change which data a step sees.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Iterator

import torch
from kdbench.method import (Batch, generalized_jsd, METHODS, Method, MethodConfig, MethodContext, check_choice,
                            check_range, disable_dropout, LossOutput)



@dataclass
class GKDConfig(MethodConfig):
    lmbda: float = 0.5  # fraction of steps on student samples (TRL GKDConfig.lmbda)
    beta: float = 0.5  # generalized-JSD interpolation (TRL GKDConfig.beta)
    temperature: float = 0.9  # on-policy sampling temperature (TRL GKDConfig.temperature)
    seq_kd: bool = False  # off-policy steps use teacher samples instead of gold (TRL GKDConfig.seq_kd)
    seq_kd_source: str = "fresh"  # fresh: a new teacher sample each step at `temperature` (TRL); cached: SeqKD's
    disable_dropout: bool = True  # TRL GKDConfig.disable_dropout

    def __post_init__(self) -> None:
        check_range("lmbda", self.lmbda, 0.0, 1.0, "gkd")
        check_range("beta", self.beta, 0.0, 1.0, "gkd")
        check_range("temperature", self.temperature, 1e-3, 100.0, "gkd")
        check_choice("seq_kd_source", self.seq_kd_source, ("fresh", "cached"), "gkd")


@METHODS.register("gkd")
class GKD(Method):
    description = "GKD: generalized JSD (beta 0.5) on student samples with prob. lambda 0.5, else gold (TRL defaults)"
    Config = GKDConfig
    requires_teacher = True
    student_init = "sft"  # GKD distils supervised fine-tuned students
    budget = "on_policy"  # samples the student every step (preset budget_train.on_policy)

    def train(self, ctx: MethodContext) -> None:
        cfg = self.config
        if cfg.disable_dropout:
            disable_dropout(ctx.student)
        scfg = dataclasses.replace(ctx.sampling, temperature=cfg.temperature)
        cached = cfg.seq_kd and cfg.seq_kd_source == "cached"
        data = ctx.teacher_samples() if cached else ctx.guided_examples()

        def batches() -> Iterator[Batch]:
            rng = random.Random(ctx.train_cfg.seed)  # seeded: the same config gives the same data order
            for k, exs in enumerate(ctx.example_batches(data)):
                on_policy = rng.random() < cfg.lmbda
                if on_policy:
                    b = ctx.rollout_batch(ctx.sample(ctx.student, exs, seed=ctx.step_seed(k),
                                                     cfg=scfg))
                elif cfg.seq_kd and not cached:  # TRL: the teacher generates this step's completions
                    b = ctx.rollout_batch(ctx.sample(ctx.teacher, exs, seed=ctx.step_seed(k), cfg=scfg))
                else:
                    b = ctx.encode(exs)
                b.extras["on_policy"] = torch.full((b.size,), float(on_policy))  # per row, for the logs
                yield b

        def loss_fn(batch):
            d = ctx.divergence(generalized_jsd, ctx.outputs(ctx.student, batch), ctx.teacher_outputs(batch), batch.loss_mask,
                                beta=cfg.beta)
            return LossOutput(d, {"gjsd": d.item(), "on_policy": float(batch.extras["on_policy"].mean())})

        ctx.fit(loss_fn, batches())
