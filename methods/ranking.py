"""Ranking distillation (MiniLLM's "Alternative #2"): teach the student the teacher's preferences.

Data source: for each prompt, `num_samples` responses freshly sampled from the current student,
plus the gold response. The teacher ranks the samples by its own log p(y|x). Update rule: a
pairwise hinge over every pair the teacher orders strictly (y+ above y-), plus SFT on the gold:

    loss = mean_pairs max(0, delta - log q(y+|x) + log q(y-|x)) + lambda * CE(y*|x)

Defaults (our choices, documented because the MiniLLM paper gives none we could verify for this
alternative): the loss follows RRHF (Yuan et al. 2023), which it mirrors. So num_samples = 4,
delta = 0 (RRHF's hinge has no margin), lambda = 1 (RRHF weights its SFT term 1), and sequence
scores are length-normalised (per-token mean log-prob, as RRHF scores candidates), for the
teacher's ranking too, so that short samples are not preferred just for being short. Set
`length_norm: false` for summed log-probs. The gold term is a token-mean cross-entropy like SFT.

Batch layout: every prompt's N samples and its gold response are consecutive rows, so when the
trainer splits a step into grad_accum micro-batches (batch_size % grad_accum == 0), each
micro-batch holds whole groups and no pair is lost.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from kdbench.method import (Batch, masked_mean, METHODS, Method, MethodConfig, MethodContext, check_range,
                            gather_logprobs, LossOutput)
from kdbench.data import collate, encode_pair


@dataclass
class RankingConfig(MethodConfig):
    num_samples: int = 4  # student responses per prompt (N)
    margin: float = 0.0  # delta of the hinge (RRHF: none)
    sft_coef: float = 1.0  # lambda, weight of the gold cross-entropy (RRHF: 1)
    length_norm: bool = True  # per-token mean log-probs for scores and ranking (RRHF)

    def __post_init__(self) -> None:
        check_range("num_samples", self.num_samples, 2, 64, "ranking")
        check_range("margin", self.margin, 0.0, 1e4, "ranking")
        check_range("sft_coef", self.sft_coef, 0.0, 1e4, "ranking")


def sequence_scores(token_logp: torch.Tensor, mask: torch.Tensor, length_norm: bool) -> torch.Tensor:
    """Per-row log q(y|x): summed (or per-token mean) log-probs over the response tokens."""
    total = torch.where(mask > 0, token_logp, torch.zeros_like(token_logp)).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if length_norm else total


def ranking_loss(scores: torch.Tensor, teacher_scores: torch.Tensor, group: torch.Tensor,
                 margin: float) -> tuple[torch.Tensor, int]:
    """Mean hinge max(0, margin - s+ + s-) over same-group pairs the teacher orders strictly."""
    better = (teacher_scores[:, None] > teacher_scores[None, :]) & (group[:, None] == group[None, :])
    hinge = torch.relu(margin - scores[:, None] + scores[None, :])
    n = int(better.sum())
    return torch.where(better, hinge, torch.zeros_like(hinge)).sum() / max(n, 1), n


@METHODS.register("ranking")
class Ranking(Method):
    description = "MiniLLM alternative #2: rank N student samples by teacher log p, pairwise hinge + gold SFT"
    Config = RankingConfig
    requires_teacher = True
    student_init = "sft"  # sampling needs an on-task student, as MiniLLM
    budget = "ranking"  # samples several responses per prompt: its own, smaller batch (preset budget_train.ranking)

    def train(self, ctx: MethodContext) -> None:
        cfg = self.config
        N = cfg.num_samples

        @torch.no_grad()
        def teacher_scores(rows: Batch) -> torch.Tensor:
            out = []
            for idx in torch.arange(rows.size).split(ctx.train_cfg.batch_size):  # bounded [n, L, V] logits
                mb = rows.select(idx)
                lp = gather_logprobs(ctx.teacher_logits(mb), mb.labels.to(ctx.device)).cpu()
                out.append(sequence_scores(lp, mb.loss_mask, cfg.length_norm))
            return torch.cat(out)

        def batches() -> Iterator[Batch]:
            for k, exs in enumerate(ctx.example_batches(ctx.guided_examples())):  # every group has a target
                rep = [ex for ex in exs for _ in range(N)]
                r = ctx.sample(ctx.student, rep, seed=ctx.step_seed(k))
                sampled = list(zip(r.prompt_ids, r.response_ids))
                t = teacher_scores(collate(sampled, ctx.pad_id)).view(len(exs), N)
                seqs, t_rows, gold, group = [], [], [], []
                for i, ex in enumerate(exs):  # group i: N samples, then the gold response
                    seqs += sampled[i * N:(i + 1) * N]
                    seqs.append(encode_pair(ctx.tokenizer, ex.prompt, ex.target, ctx.max_length, ctx.max_prompt_length))
                    t_rows += t[i].tolist() + [0.0]
                    gold += [0.0] * N + [1.0]
                    group += [float(i)] * (N + 1)
                b = collate(seqs, ctx.pad_id)
                b.extras.update(teacher_score=torch.tensor(t_rows), gold=torch.tensor(gold),
                                group=torch.tensor(group))
                yield b

        def loss_fn(batch: Batch) -> LossOutput:
            mask = batch.loss_mask
            is_gold = batch.extras["gold"] > 0
            lp = gather_logprobs(ctx.logits(ctx.student, batch), batch.labels)
            scores = sequence_scores(lp, mask, cfg.length_norm)
            # gold rows get a group of their own (-1 - i) so they never enter a pair
            group = torch.where(is_gold, -1.0 - torch.arange(batch.size, device=mask.device), batch.extras["group"])
            rank, n_pairs = ranking_loss(scores, batch.extras["teacher_score"], group, cfg.margin)
            sft = masked_mean(-lp, mask * is_gold[:, None].float())
            return LossOutput(rank + cfg.sft_coef * sft, {"rank": rank.item(), "sft": sft.item(),
                                                          "pairs": float(n_pairs)})

        ctx.fit(loss_fn, batches())
