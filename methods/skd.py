"""Speculative KD (Xu et al., ICLR 2025, arXiv 2410.11325): token-level KD on interleaved student/teacher samples.

Data source: generated online every optimizer step, one sequence per prompt (train prompts and the
unlabeled ones, kdbench's convention for on-policy methods), no cache or replay. At
each position the student proposes y ~ q; when y is not in the teacher's top-K (K = 25) the
teacher's own sample y ~ p replaces it (paper Alg. 1; kdbench.sampling with `skd_topk`, stepping
both models with their KV caches as teacher-mixed sampling does). K = |V| is on-policy KD; K = 1
keeps only proposals the teacher ranks first.

Divergence: forward KL(p || q) by default (ddp_skd.py: KLDivLoss, log_target); reverse KL or JSD(0.5)
selectable with `divergence`.

Update rule: gradient descent on the mean over sequences of each sequence's token-mean divergence
((1/n) sum_t D per sequence, mean over prompts: what upstream's per-sequence `batchmean` at batch
size 1 computes). Starts from the SFT student (the paper's default initialisation).

Deviations, recorded:
- The proposal is tested against the RAW teacher's top-K as the paper states. The official sampler
  tests a fresh second draft instead of the kept one, takes top-K after temperature/top-p warping,
  and verifies blocks of gamma = 5 drafts; the block form has the same sequence distribution as the
  per-token rule, so we step token by token.
- Both models sample with the run's rollout decoding (MiniLLM's T = 1, top-p 1) unless
  `temperature`/`top_p` are set; the official scripts use student T 0.5 / top-p 0.5 and teacher
  T 0.2 / top-p 0.5 (config/kd_train.yaml), tuned for their translation/summarisation tasks.
- The official loss slice `logits[0, prompt_len:]` is one position late; ours is aligned with the
  labels (kdbench.data).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from kdbench.divergences import token_forward_kl, token_js, token_reverse_kl
from kdbench.method import (Batch, METHODS, Method, MethodConfig, MethodContext, LossOutput, check_choice,
                            check_range)

TOKEN_DIVERGENCES = {"fkl": token_forward_kl, "rkl": token_reverse_kl, "jsd": token_js}


@dataclass
class SKDConfig(MethodConfig):
    topk: int = 25  # K (speculative_kd config/kd_train.yaml; README)
    divergence: str = "fkl"  # ddp_skd.py distance "kl" = forward KL; rkl | jsd selectable
    temperature: float = 1.0  # both models' sampling temperature (see the docstring's deviations)
    top_p: float = 1.0

    def __post_init__(self) -> None:
        check_range("topk", self.topk, 1, 10**9, "skd")
        check_choice("divergence", self.divergence, tuple(TOKEN_DIVERGENCES), "skd")
        check_range("temperature", self.temperature, 1e-3, 100.0, "skd")
        check_range("top_p", self.top_p, 1e-6, 1.0, "skd")


def sequence_mean_divergence(token_fn, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                             mask: torch.Tensor) -> torch.Tensor:
    """mean over rows of (sum_t m D_t / sum_t m), D evaluated on masked-in positions only; rows
    without tokens count as 0."""
    keep = mask > 0
    vals = torch.zeros(mask.shape, dtype=torch.float32, device=student_logits.device)
    vals = vals.masked_scatter(keep, token_fn(student_logits[keep], teacher_logits[keep]))
    m = mask.float()
    return ((vals * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()


@METHODS.register("skd")
class SKD(Method):
    description = "speculative KD: forward KL on student proposals, teacher-replaced outside its top-25"
    Config = SKDConfig
    requires_teacher = True
    student_init = "sft"
    budget = "on_policy"  # a two-model decode loop every step

    def train(self, ctx: MethodContext) -> None:
        cfg = self.config
        scfg = dataclasses.replace(ctx.sampling, temperature=cfg.temperature, top_p=cfg.top_p)
        token_fn = TOKEN_DIVERGENCES[cfg.divergence]

        def batches():
            for k, exs in enumerate(ctx.example_batches(ctx.prompt_examples)):  # unlabeled prompts too
                ro = ctx.sample(ctx.student, exs, seed=ctx.step_seed(k), cfg=scfg, skd_topk=cfg.topk)
                b = ctx.rollout_batch(ro, {"replaced": ro.replaced})
                yield b

        def loss_fn(batch: Batch) -> LossOutput:
            s = ctx.logits(ctx.student, batch)
            d = sequence_mean_divergence(token_fn, s, ctx.teacher_logits(batch), batch.loss_mask)
            mask = batch.loss_mask
            replaced = float((batch.extras["replaced"] * mask).sum() / mask.sum().clamp(min=1))
            return LossOutput(d, {cfg.divergence: float(d.detach()), "accept": 1.0 - replaced})

        ctx.fit(loss_fn, batches())
