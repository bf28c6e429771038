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

`rank_by: reward` ranks by MiniLLM's reward instead, log p(y|x) - log q(y|x) with q the student
that sampled (per token mean under `length_norm`), so that a sample is preferred where the teacher
likes it *more than the student does*; the default `teacher` (log p alone, our reading of the
paper's alternative) lets a length-normalised likelihood prefer repetitive samples, which a
repeated phrase makes likely under any model. Every step logs the number of ranked pairs
(`pairs`), the share of sampled responses that repeat a token 4-gram (`repetition`) and that share
among the samples ranked first (`repetition_top`), so the bias is visible in the history.

Batch layout: every prompt's N samples and its gold response are consecutive rows, so when the
trainer splits a step into grad_accum micro-batches (batch_size % grad_accum == 0), each
micro-batch holds whole groups and no pair is lost.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from kdbench.method import (Batch, masked_mean, METHODS, Method, MethodConfig, MethodContext, check_choice,
                            check_range, LossOutput)
from kdbench.data import collate, encode_pair


RANK_BY = ("teacher", "reward")
REPEAT_N = 4  # n of the repeated n-gram the repetition rate counts (Dist-4's n)


@dataclass
class RankingConfig(MethodConfig):
    num_samples: int = 4  # student responses per prompt (N)
    margin: float = 0.0  # delta of the hinge (RRHF: none)
    sft_coef: float = 1.0  # lambda, weight of the gold cross-entropy (RRHF: 1)
    length_norm: bool = True  # per-token mean log-probs for scores and ranking (RRHF)
    rank_by: str = "teacher"  # teacher: log p(y|x); reward: log p(y|x) - log q(y|x) (MiniLLM's reward)

    def __post_init__(self) -> None:
        check_choice("rank_by", self.rank_by, RANK_BY, "ranking")
        check_range("num_samples", self.num_samples, 2, 64, "ranking")
        check_range("margin", self.margin, 0.0, 1e4, "ranking")
        check_range("sft_coef", self.sft_coef, 0.0, 1e4, "ranking")


def sequence_scores(token_logp: torch.Tensor, mask: torch.Tensor, length_norm: bool) -> torch.Tensor:
    """Per-row log q(y|x): summed (or per-token mean) log-probs over the response tokens."""
    total = torch.where(mask > 0, token_logp, torch.zeros_like(token_logp)).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if length_norm else total


def ranking_scores(teacher_logp: torch.Tensor, student_logp: torch.Tensor, mask: torch.Tensor, rank_by: str,
                   length_norm: bool) -> torch.Tensor:
    """What the teacher ranks samples by: log p(y|x) (rank_by teacher) or the reward
    log p(y|x) - log q(y|x) (rank_by reward); summed or per-token mean over the response."""
    if rank_by == "teacher":
        return sequence_scores(teacher_logp, mask, length_norm)
    if rank_by == "reward":
        return sequence_scores(teacher_logp - student_logp, mask, length_norm)
    raise ValueError(f"rank_by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")


def repeats_ngram(ids, n: int = REPEAT_N) -> bool:
    """Whether a token n-gram occurs twice in `ids` (EOS and what follows excluded by the caller)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) != len(set(grams))


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
            was_training = ctx.student.training
            ctx.student.eval()  # the sampling student's log q, without dropout noise
            for idx in torch.arange(rows.size).split(ctx.train_cfg.batch_size):  # bounded [n, L, V] logits
                mb = rows.select(idx)
                labels = mb.labels.to(ctx.device)
                t_lp = ctx.logprobs(ctx.teacher_outputs(mb), labels).cpu()
                # log q only where the ranking needs it
                s_lp = ctx.logprobs(ctx.outputs(ctx.student, mb), labels).cpu() if cfg.rank_by == "reward" else None
                out.append(ranking_scores(t_lp, s_lp, mb.loss_mask, cfg.rank_by, cfg.length_norm))
            ctx.student.train(was_training)
            return torch.cat(out)

        def batches() -> Iterator[Batch]:
            for k, exs in enumerate(ctx.example_batches(ctx.guided_examples())):  # every group has a target
                rep = [ex for ex in exs for _ in range(N)]
                r = ctx.sample(ctx.student, rep, seed=ctx.step_seed(k))
                sampled = list(zip(r.prompt_ids, r.response_ids))
                t = teacher_scores(collate(sampled, ctx.pad_id)).view(len(exs), N)
                eos = ctx.tokenizer.eos_token_id
                rep = [float(repeats_ngram(resp[: resp.index(eos)] if eos in resp else resp)) for resp in r.response_ids]
                seqs, t_rows, gold, group, repeated, top = [], [], [], [], [], []
                for i, ex in enumerate(exs):  # group i: N samples, then the gold response
                    seqs += sampled[i * N:(i + 1) * N]
                    seqs.append(encode_pair(ctx.tokenizer, ex.prompt, ex.target, ctx.max_length, ctx.max_prompt_length))
                    t_rows += t[i].tolist() + [0.0]
                    gold += [0.0] * N + [1.0]
                    group += [float(i)] * (N + 1)
                    repeated += rep[i * N:(i + 1) * N] + [0.0]
                    best = int(t[i].argmax())
                    top += [float(j == best) for j in range(N)] + [0.0]
                b = collate(seqs, ctx.pad_id)
                b.extras.update(teacher_score=torch.tensor(t_rows), gold=torch.tensor(gold),
                                group=torch.tensor(group), repeated=torch.tensor(repeated), top=torch.tensor(top))
                yield b

        def loss_fn(batch: Batch) -> LossOutput:
            mask = batch.loss_mask
            is_gold = batch.extras["gold"] > 0
            lp = ctx.logprobs(ctx.outputs(ctx.student, batch), batch.labels)
            scores = sequence_scores(lp, mask, cfg.length_norm)
            # gold rows get a group of their own (-1 - i) so they never enter a pair
            group = torch.where(is_gold, -1.0 - torch.arange(batch.size, device=mask.device), batch.extras["group"])
            rank, n_pairs = ranking_loss(scores, batch.extras["teacher_score"], group, cfg.margin)
            sft = masked_mean(-lp, mask * is_gold[:, None].float())
            rep, top = batch.extras["repeated"], batch.extras["top"] > 0
            samples = ~is_gold
            return LossOutput(rank + cfg.sft_coef * sft, {
                "rank": rank.item(), "sft": sft.item(), "pairs": float(n_pairs),
                "repetition": float(rep[samples].mean()) if bool(samples.any()) else 0.0,
                "repetition_top": float(rep[top].mean()) if bool(top.any()) else 0.0})

        ctx.fit(loss_fn, batches())
