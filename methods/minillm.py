"""MiniLLM (Gu et al., ICLR 2024): sequence-level reverse KL, KL(q || p), by policy gradient.

Data source: rollouts from teacher-mixed sampling, y_t ~ (1 - alpha) q + alpha p with alpha 0.2,
corrected by per-token importance weights w_t = q(y_t) / mix(y_t) (from the sampler's log-probs).
Update rule: PPO-style clipped policy gradient, no value network, several PPO epochs per round:

    loss = PPO-clip(ratio = q_new / q_old * w, A)       long-range part
         + mean_t KL(q(.|y_<t) || p(.|y_<t))           single-step part (exact, full vocabulary)
         + lm_coef * LM loss on the pretraining stream  L_PT

with rewards r_t = log p(y_t) - log q_old(y_t) and A_t = whiten(long_range_advantages(r, gamma 0.95,
length-normalised)), whitened over the valid tokens of the whole rollout round.

One round: sample `rollout_minibatches * batch_size` rollouts with the current student (no_grad),
score them once (old log-probs, teacher log-probs, advantages), then yield `ppo_epochs` shuffled
passes of `batch_size` minibatches, one per optimizer step. Paper: 256 rollouts, mini-batch 64,
4 PPO epochs; the ratio 256 / 64 is `rollout_minibatches` = 4, so the round scales with the batch.

Choices recorded (upstream LMOps code vs ours):
- `advantage: paper | lmops` (recorded in the cell's method_config, so part of its key). Default
  `paper`: the paper's R_{t+1}, the future after token t (paper Sec. 2.2, Eq. 5-6). Why: the
  gradient splits into the single-step term, which takes the expectation of r_t over the whole
  vocabulary exactly, and the long-range term for what comes after t; the code's sum from t
  (`lmops`: LMOps minillm/losses.py `_get_advantages_and_returns`, also TRL's MiniLLM trainer)
  counts r_t a second time as a sampled score-function term whenever the single-step term is on.
  `lmops` reproduces the released code (kdbench.advantages); the measured difference on the tiny
  preset is in docs/protocol.md;
- whitening excludes padding and spans the round, not one minibatch;
- upstream scales rewards by 1/reward_scaling (x2) before whitening, which whitening undoes; omitted;
- the single-step term is not importance-weighted (nor is it upstream);
- L_PT is the paper's pure LM loss; the code mixes 0.5 forward KL to the teacher into it
  (`pt_kd_ratio` = 0.5 reproduces that). L_PT reads config `pt_corpus` (a cached stage), else the train
  task's text stream; with neither the term is skipped and every report labels the row
  `minillm (no L_PT)`, the paper's "w/o L_PT" ablation;
- the student is PPOModel-style dropout-free (upstream keeps the policy in eval mode);
- L_PT is the mean over the step's L_PT tokens however the step is split into micro-batches or
  across ranks (`pt_share`), so grad_accum and the number of processes do not change the update.
Learning rate, betas and schedule (paper: 5e-6, betas (0.9, 0.95), constant with 100 warm-up steps)
live in the TrainConfig of the preset, like every method's budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from kdbench.method import (Batch, forward_kl, masked_mean, reverse_kl, METHODS, Method, MethodConfig, MethodContext,
                            check_choice, check_range, disable_dropout, LossOutput,
                            ResumableBatches)
from kdbench.advantages import ADVANTAGE_MODES, long_range_advantages, ppo_clipped_loss, sequence_rewards, whiten


@dataclass
class MiniLLMConfig(MethodConfig):
    method_name: ClassVar[str] = "minillm"
    single_step: bool = True  # add the exact single-step reverse KL (--single-step-reg)
    teacher_mix: bool = True  # teacher-mixed sampling for rollouts
    teacher_mix_alpha: float = 0.2  # --teacher-mixed-alpha 0.2
    length_norm: bool = True  # length-normalised long-range advantages (--length-norm)
    gamma: float = 0.95  # discount of future rewards (--gamma)
    advantage: str = "paper"  # paper: R_{t+1} (paper Eq. 5); lmops: sum from t (LMOps minillm/losses.py)
    clip: float = 0.2  # PPO ratio clip epsilon (--cliprange)
    ppo_epochs: int = 4  # passes over each rollout round (--ppo-epochs 4)
    rollout_minibatches: int = 4  # rollouts per round = this x batch_size (256 rollouts / mini-batch 64)
    lm_coef: float = 1.0  # weight of L_PT on the pretraining stream (--lm-coef 1); 0 turns it off
    pt_kd_ratio: float = 0.0  # forward-KL share inside L_PT (paper 0; LMOps code 0.5)
    disable_dropout: bool = True  # upstream keeps the policy in eval mode

    def __post_init__(self) -> None:
        m = self.method_name
        check_range("teacher_mix_alpha", self.teacher_mix_alpha, 0.0, 1.0, m)
        check_range("gamma", self.gamma, 0.0, 1.0, m)
        check_choice("advantage", self.advantage, ADVANTAGE_MODES, m)
        check_range("clip", self.clip, 0.0, 10.0, m)
        check_range("ppo_epochs", self.ppo_epochs, 1, 1000, m)
        check_range("rollout_minibatches", self.rollout_minibatches, 1, 1000, m)
        check_range("lm_coef", self.lm_coef, 0.0, 1000.0, m)
        check_range("pt_kd_ratio", self.pt_kd_ratio, 0.0, 1.0, m)


def _trim(b: Batch) -> Batch:
    """Drop trailing all-padding columns (a minibatch of a round is often shorter than the round)."""
    L = max(1, int(b.attention_mask.sum(1).max()))
    return Batch(b.input_ids[:, :L], b.attention_mask[:, :L], b.labels[:, :L],
                 {k: v[:, :L] for k, v in b.extras.items()})


@METHODS.register("minillm")
class MiniLLM(Method):
    description = "MiniLLM: reverse-KL policy gradient (teacher-mixed rollouts, single-step term, length norm, PT loss)"
    Config = MiniLLMConfig
    requires_teacher = True
    student_init = "sft"  # MiniLLM starts from the SFT student
    budget = "on_policy"  # samples the student every step (preset budget_train.on_policy)
    uses_pretrain_corpus = True  # L_PT (config pt_corpus)

    @torch.no_grad()
    def make_round(self, ctx: MethodContext, examples, seed: int) -> Batch:
        """Sample one rollout round for `examples` and score it: a right-padded Batch whose extras
        hold, per response token, the old log-prob, the reward, the whitened advantage and (with
        teacher mixing) the importance weight w = q / mix."""
        cfg = self.config
        alpha = cfg.teacher_mix_alpha if cfg.teacher_mix else 0.0
        rollout = ctx.sample(ctx.student, examples, seed=seed, mix_alpha=alpha)
        extras = None
        if alpha > 0:  # w_t = q(y_t) / mix(y_t), from the sampler's own log-probs
            extras = {"w": [[math.exp(s - m) for s, m in zip(sl, ml)]
                            for sl, ml in zip(rollout.student_logp, rollout.mix_logp)]}
        store = ctx.rollout_batch(rollout, extras)
        # old (behaviour) and teacher log-probs from the same forward pass training uses, so (dropout
        # off) the PPO ratio is exactly 1 before the first update; in chunks: [N, L, V] may not fit
        # Several ranks: each scores its share of the round's rows, and all get every row's scores.
        was_training = ctx.student.training
        ctx.student.eval()

        def score(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            old, teach = [], []
            for idx in torch.tensor(rows, dtype=torch.long).split(ctx.train_cfg.batch_size):
                mb = store.select(idx)
                labels = mb.labels.to(ctx.device)
                old.append(ctx.logprobs(ctx.outputs(ctx.student, mb), labels).cpu())
                teach.append(ctx.logprobs(ctx.teacher_outputs(mb), labels).cpu())
            empty = torch.zeros(0, store.labels.shape[1])
            return (torch.cat(old), torch.cat(teach)) if old else (empty, empty)

        try:
            parts = ctx.map_rows(store.size, score)
        finally:
            ctx.student.train(was_training)
        mask = store.loss_mask
        old_lp, t_lp = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        rewards = sequence_rewards(t_lp, old_lp, mask)
        adv = whiten(long_range_advantages(rewards, mask, cfg.gamma, cfg.length_norm, cfg.advantage), mask)
        store.extras.update(old_logp=old_lp, reward=rewards, adv=adv)
        ctx.counters.add("rollouts", store.size)
        return store

    def train(self, ctx: MethodContext) -> None:
        cfg = self.config
        B = ctx.train_cfg.batch_size
        if cfg.disable_dropout:
            disable_dropout(ctx.student)
        pt_iter = None
        if cfg.lm_coef > 0:
            if ctx.pretrain_blocks is None:
                # the paper's "w/o L_PT" ablation, not MiniLLM: every report labels the row so
                ctx.log.warning("%s: no pretraining corpus (config pt_corpus) and the train task has no text stream; "
                                "L_PT (lm_coef=%g) is skipped and the row is labelled 'no L_PT'",
                                ctx.method_name or "minillm", cfg.lm_coef)
                ctx.variant = "no L_PT"
            else:
                pt_iter = ctx.pretrain_batches(batch_size=B)

        def step(k: int, rb: ResumableBatches) -> Batch:
            # A round (rollouts, scores, minibatch order) serves several steps and was sampled by the
            # model of its first step: it is checkpointed state, never resampled on resume.
            st = rb.state
            if not st.get("queue"):
                r = st.get("round", 0)
                store = self.make_round(ctx, rb.draw("examples"), seed=ctx.step_seed(r))
                shuffle = torch.Generator()
                if "shuffle" in st:
                    shuffle.set_state(st["shuffle"])
                else:
                    shuffle.manual_seed(ctx.train_cfg.seed)
                st["queue"] = [idx for _ in range(cfg.ppo_epochs)
                               for idx in torch.randperm(store.size, generator=shuffle).split(B)]
                st.update(round=r + 1, store=store, shuffle=shuffle.get_state())
            mb = _trim(st["store"].select(st["queue"].pop(0)))
            if pt_iter is not None:  # per-row extras, so micro-batch splitting keeps them paired
                pt = rb.draw("pt")
                mb.extras["pt_input_ids"] = pt.input_ids[: mb.size]
                mb.extras["pt_labels"] = pt.labels[: mb.size]
                # the step's response tokens per L_PT token, for `pt_share` (per row: splitting keeps it)
                ratio = (mb.n_tokens or mb.size) / max(1, int((mb.extras["pt_labels"] >= 0).sum()))
                mb.extras["pt_ratio"] = torch.full((mb.size,), ratio, dtype=torch.float64)
            return mb

        def pt_share(batch: Batch) -> float:
            """The trainer weights a micro-batch's (or a rank's share's) loss by its share of the step's
            response tokens; L_PT is a mean over its own tokens, so its share's mean is rescaled by
            (its L_PT tokens / its response tokens) x (the step's response / L_PT tokens): the
            weighted sum is then the step's L_PT mean whatever the split (grad_accum, ranks). 1 for
            one micro-batch."""
            pt_tokens = int((batch.extras["pt_labels"] >= 0).sum())
            return float(batch.extras["pt_ratio"][0]) * pt_tokens / (batch.n_tokens or batch.size)

        def loss_fn(batch: Batch) -> LossOutput:
            mask = batch.loss_mask
            s = ctx.outputs(ctx.student, batch)
            logp = ctx.logprobs(s, batch.labels)
            pg = ppo_clipped_loss(logp, batch.extras["old_logp"], batch.extras["adv"], mask, cfg.clip,
                                  importance_weights=batch.extras.get("w"))
            loss = pg
            logs = {"pg": pg.item(), "reward": float(masked_mean(batch.extras["reward"], mask))}
            if cfg.single_step:
                single = ctx.divergence(reverse_kl, s, ctx.teacher_outputs(batch), mask)
                loss = loss + single
                logs["single_step"] = single.item()
            if "pt_input_ids" in batch.extras:
                lm = Batch(batch.extras["pt_input_ids"], torch.ones_like(batch.extras["pt_input_ids"]),
                           batch.extras["pt_labels"])
                lm_out = ctx.outputs(ctx.student, lm)
                pt = ctx.cross_entropy(lm_out, lm.labels)
                if cfg.pt_kd_ratio > 0:
                    pt = (1 - cfg.pt_kd_ratio) * pt + cfg.pt_kd_ratio * ctx.divergence(
                        forward_kl, lm_out, ctx.teacher_outputs(lm), lm.loss_mask)
                pt = pt * pt_share(batch)
                loss = loss + cfg.lm_coef * pt
                logs["pt"] = pt.item()
            return LossOutput(loss, logs)

        streams = {"examples": ctx.example_batches(ctx.prompt_examples, batch_size=B * cfg.rollout_minibatches)}
        if pt_iter is not None:
            streams["pt"] = pt_iter
        ctx.fit(loss_fn, ResumableBatches(step, **streams))


# --- the paper's ablations (Table 5): one strategy off each -------------------------------------

@dataclass
class MiniLLMNoSingleStepConfig(MiniLLMConfig):
    method_name: ClassVar[str] = "minillm-no-single-step"
    single_step: bool = False


@METHODS.register("minillm-no-single-step")
class MiniLLMNoSingleStep(MiniLLM):
    description = "MiniLLM ablation: without the single-step reverse-KL term"
    Config = MiniLLMNoSingleStepConfig


@dataclass
class MiniLLMNoTeacherMixConfig(MiniLLMConfig):
    method_name: ClassVar[str] = "minillm-no-teacher-mix"
    teacher_mix: bool = False


@METHODS.register("minillm-no-teacher-mix")
class MiniLLMNoTeacherMix(MiniLLM):
    description = "MiniLLM ablation: rollouts from the student alone (no teacher-mixed sampling)"
    Config = MiniLLMNoTeacherMixConfig


@dataclass
class MiniLLMNoLengthNormConfig(MiniLLMConfig):
    method_name: ClassVar[str] = "minillm-no-length-norm"
    length_norm: bool = False


@METHODS.register("minillm-no-length-norm")
class MiniLLMNoLengthNorm(MiniLLM):
    description = "MiniLLM ablation: long-range advantages without length normalisation"
    Config = MiniLLMNoLengthNormConfig


@dataclass
class MiniLLMLMOpsAdvantageConfig(MiniLLMConfig):
    method_name: ClassVar[str] = "minillm-lmops-adv"
    advantage: str = "lmops"


@METHODS.register("minillm-lmops-adv")
class MiniLLMLMOpsAdvantage(MiniLLM):
    description = "MiniLLM with the released code's advantage (sum from t, LMOps/TRL) instead of the paper's R_{t+1}"
    Config = MiniLLMLMOpsAdvantageConfig
