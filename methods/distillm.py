"""DistiLLM (Ko et al., ICML 2024): skew reverse KL with adaptive student-generated outputs (SGO).

Divergence: skew reverse KL, KL(q || alpha*q + (1-alpha)*p) with alpha 0.1 (`loss: srkl`; `sfkl` is
the skew forward KL of its GPT-2 0.1B script). Update rule: gradient descent on the token-mean
(kd_ratio 1: no gold cross-entropy term, as its maintainer confirms).

Data source, per optimizer step (DistiLLM's `adaptive-*` types with `--student-gen`):
- a threshold tau starts at `init_threshold` (0); at every dev check, if the student's dev LM loss
  rose by at least `loss_eps` (0.1) over the reference, tau += 0.1 (capped at 1) and the reference
  moves to the new loss; the first reference is the loss before training;
- draw r ~ U(0, 1); p_s = tau * (1 - step / total) for `replay_ratio: decreasing` (tau/2 for
  constant, tau * step / total for increasing);
- r < p_s, or r < tau while the replay buffer is not full: sample fresh student responses for the
  step's prompts, push them to the FIFO buffer (capacity 1000), train on them;
- else r < tau: train on a uniform random batch from the buffer (off-policy reuse, no generation);
- else: train on the gold responses.
With the upstream default tau = 0 the schedule starts on gold data and turns to SGO only once the
dev loss shows over-fitting, so short budgets may never sample.

Dev set: the engine gives methods no dev split, so `dev_size` train examples are held out (seeded)
and never trained on; upstream uses its dev split and checks once per epoch (`eval_every: 0`).
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import torch

from kdbench.method import (Batch, skew_forward_kl, skew_reverse_kl, METHODS, Method, MethodConfig, MethodContext,
                            check_choice, check_range, LossOutput, ResumableBatches)
from kdbench.data import collate
from kdbench.errors import ConfigError

LOSSES = {"srkl": skew_reverse_kl, "sfkl": skew_forward_kl}
REPLAY_RATIOS = ("decreasing", "constant", "increasing")


@dataclass
class DistiLLMConfig(MethodConfig):
    loss: str = "srkl"  # srkl | sfkl (DistiLLM GPT-2 scripts: adaptive-srkl for 0.3B/0.7B, adaptive-sfkl for 0.1B)
    skew_alpha: float = 0.1  # --skew-alpha
    kd_ratio: float = 1.0  # (1 - r) * CE + r * skew loss; 1 = pure distillation (--kd-ratio 1.0)
    init_threshold: float = 0.0  # --init-threshold
    threshold_step: float = 0.1  # tau increment (hard-coded upstream)
    loss_eps: float = 0.1  # --loss-eps: dev-loss rise that raises tau
    replay_ratio: str = "decreasing"  # --replay-ratio
    capacity: int = 1000  # --capacity: replay buffer size in sequences
    eval_every: int = 0  # steps between dev checks; 0 = once per pass over the train prompts (upstream)
    dev_size: int = 64  # train examples held out for the dev loss

    def __post_init__(self) -> None:
        check_choice("loss", self.loss, LOSSES, "distillm")
        if self.replay_ratio not in REPLAY_RATIOS:
            raise ConfigError(f"config key 'method_config.distillm.replay_ratio': '{self.replay_ratio}' is not "
                              f"one of {', '.join(REPLAY_RATIOS)}")
        check_range("skew_alpha", self.skew_alpha, 0.0, 1.0, "distillm")
        if self.skew_alpha == 1.0:  # KL(p || p) or KL(q || q): 0 for every student, nothing to learn
            raise ConfigError("config key 'method_config.distillm.skew_alpha': must be in [0, 1), got 1.0 "
                              "(at 1 the skew divergence is 0 whatever the student)")
        check_range("kd_ratio", self.kd_ratio, 0.0, 1.0, "distillm")
        check_range("init_threshold", self.init_threshold, 0.0, 1.0, "distillm")
        check_range("threshold_step", self.threshold_step, 0.0, 1.0, "distillm")
        check_range("loss_eps", self.loss_eps, 0.0, 1e4, "distillm")
        check_range("capacity", self.capacity, 1, 10**7, "distillm")
        check_range("eval_every", self.eval_every, 0, 10**9, "distillm")
        check_range("dev_size", self.dev_size, 1, 10**7, "distillm")


def sgo_probability(threshold: float, step: int, total: int, replay_ratio: str) -> float:
    """p_s, the chance of fresh student generation at 1-based `step` of `total`."""
    if replay_ratio == "constant":
        return threshold * 0.5
    if replay_ratio == "increasing":
        return threshold * step / total
    return threshold * (1 - step / total)


@METHODS.register("distillm")
class DistiLLM(Method):
    description = "DistiLLM: skew reverse KL (alpha 0.1) with adaptive student-generated outputs + replay buffer"
    Config = DistiLLMConfig
    requires_teacher = True
    student_init = "sft"  # DistiLLM starts from the SFT student (scripts/*/init)
    budget = "on_policy"  # samples the student every step (preset budget_train.on_policy)

    def train(self, ctx: MethodContext) -> None:
        cfg = self.config
        B = ctx.train_cfg.batch_size
        exs = list(ctx.train_examples)
        if len(exs) < 2 * cfg.dev_size:
            raise ConfigError(f"config key 'method_config.distillm.dev_size': {cfg.dev_size} held-out examples need "
                              f"at least {2 * cfg.dev_size} train examples, the task has {len(exs)}; lower dev_size")
        order = list(range(len(exs)))
        random.Random(ctx.train_cfg.seed).shuffle(order)
        dev = [exs[i] for i in order[: cfg.dev_size]]  # gold only: the dev loss is on gold responses
        # the rest, plus the teacher's samples on prompts without gold (if the run has them)
        train = [exs[i] for i in order[cfg.dev_size:]] + ctx.guided_examples()[len(exs):]
        eval_every = cfg.eval_every or max(1, len(train) // B)
        total = max(1, ctx.train_cfg.steps)
        divergence = LOSSES[cfg.loss]

        @torch.no_grad()
        def dev_part(rows: list[int]) -> tuple[float, int]:
            """(summed token loss, tokens) over dev examples `rows`."""
            tot, n = 0.0, 0
            for i in range(0, len(rows), B):
                b = ctx.encode([dev[j] for j in rows[i: i + B]])
                tot += float(ctx.cross_entropy(ctx.outputs(ctx.student, b), b.labels)) * b.n_tokens
                n += b.n_tokens
            return tot, n

        def dev_loss() -> float:
            # several ranks: each scores its share of the dev examples, every rank gets the total
            ctx.student.eval()
            try:
                parts = ctx.map_rows(len(dev), dev_part)
            finally:
                ctx.student.train()
            return sum(t for t, _ in parts) / max(sum(n for _, n in parts), 1)

        def step(k: int, rb: ResumableBatches) -> Batch:
            # buffer, threshold and reference loss come from earlier students: checkpointed state,
            # so a resumed run does not rebuild them with the restored (later) student
            st = rb.state
            if not st:
                st.update(rng=random.Random(ctx.train_cfg.seed + 1), buffer=deque(maxlen=cfg.capacity),
                          tau=cfg.init_threshold, ref=dev_loss())
            st.setdefault("dev", st["ref"])  # a checkpoint from before the dev loss was logged has none
            rng, buffer = st["rng"], st["buffer"]
            step_exs = rb.draw("examples")
            if k > 0 and k % eval_every == 0:
                cur = st["dev"] = dev_loss()
                if cur >= st["ref"] + cfg.loss_eps:
                    st["tau"], st["ref"] = min(1.0, st["tau"] + cfg.threshold_step), cur
            tau = st["tau"]
            p_s = sgo_probability(tau, k + 1, total, cfg.replay_ratio)
            r = rng.random()
            if r < p_s or (r < tau and len(buffer) < cfg.capacity):
                ro = ctx.sample(ctx.student, step_exs, seed=ctx.step_seed(k))
                seqs = list(zip(ro.prompt_ids, ro.response_ids))
                buffer.extend(seqs)
                b, src = collate(seqs, ctx.pad_id), 1.0
            elif r < tau:
                b, src = collate(rng.sample(list(buffer), min(B, len(buffer))), ctx.pad_id), 2.0
            else:
                b, src = ctx.encode(step_exs), 0.0
            # per-row bookkeeping for the logs: data source and current threshold
            b.extras.update(source=torch.full((b.size,), src), threshold=torch.full((b.size,), tau),
                            dev_loss=torch.full((b.size,), st["dev"]))
            return b

        def loss_fn(batch: Batch) -> LossOutput:
            s = ctx.outputs(ctx.student, batch)
            d = ctx.divergence(divergence, s, ctx.teacher_outputs(batch), batch.loss_mask, alpha=cfg.skew_alpha)
            loss = d
            src = batch.extras["source"]
            logs = {cfg.loss: d.item(), "fresh": float((src == 1).float().mean()),
                    "replay": float((src == 2).float().mean()), "threshold": float(batch.extras["threshold"].mean()),
                    "dev_loss": float(batch.extras["dev_loss"].mean())}  # the latest dev check's
            if cfg.kd_ratio < 1:
                ce = ctx.cross_entropy(s, batch.labels)
                loss = cfg.kd_ratio * d + (1 - cfg.kd_ratio) * ce
                logs["ce"] = ce.item()
            return LossOutput(loss, logs)

        ctx.fit(loss_fn, ResumableBatches(step, examples=ctx.example_batches(train)))
