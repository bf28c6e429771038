"""TAID (Shing et al., ICLR 2025, arXiv 2501.16937): temporally adaptive interpolated distillation.

Data source: the fixed gold responses (upstream: UltraChat train_sft); the student starts from its
base model, as upstream distils pretrained students.

Divergence: cross-entropy to a moving target interpolated in logit space from the student to the
teacher, r = softmax((1 - t) * sg(z_student) + t * z_teacher), J = token-mean of -sum_v r log q
(taid.py compute_loss through fkl.py forward_kl with teacher_probs = r). Its gradient is that of
KL(r || q); the value includes H(r), which moves with t. t = 1 is forward KL plus the teacher's
entropy; t = 0 has zero gradient.

Update rule: gradient descent on (1 - distil_ratio) * CE + distil_ratio * J with distil_ratio 1
(no CE; loss.py:21, arguments.py --distil_ratio). After every optimizer step, t moves by TAID's
adaptive rule (taid.py:38-64, `next_t` below): the first step only records J; then
delta = (J_prev - J) / (J_prev + 1e-15), M <- beta M + (1 - beta) delta, and
t <- min(t_end, max(t_lin, t + alpha * sigmoid(M) * (1 - t))), t_lin = t_start + (t_end - t_start)
* step / total (step 0-based, Lightning's global_step when the loss was computed). So t never
decreases, stays at or above the linear floor, and moves faster while the loss falls.

t, M and J_prev are checkpointed with the data state (ResumableBatches.state), so a resumed run
continues with exactly the t it had; `t` is logged in the history (its mean over the log window).

Deviations from the official code:
- t is updated once per optimizer step, from J of the whole step (token-weighted over its
  micro-batches), in training only. Upstream updates it inside the loss forward, so it also moves
  on validation batches (model.py:136, validation_step) and on every micro-batch under gradient accumulation.
- only response tokens are distilled; upstream's labels are the full input_ids, so it also distils
  prompt tokens (prepare_ultrachat.py:26; data.py:81-82 masks only padding). kdbench's protocol
  normalises every loss by response tokens.
- t lives in Python floats (float64), not fp32 CUDA buffers.
- Multi-process runs all-reduce J before the update, so every rank keeps the same t; a resume
  under several processes restarts the pending step's J from rank 0's share (one update inexact).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdbench.errors import ConfigError
from kdbench.method import (METHODS, Batch, LossOutput, Method, MethodConfig, MethodContext, ResumableBatches,
                            check_range, masked_token_loss)


@dataclass
class TAIDConfig(MethodConfig):
    t_start: float = 0.4  # taid.py:11, arguments.py:57-59 (the Phi-3 run); scripts/{llama-2,stablelm}/taid.sh use 0.2
    t_end: float = 1.0  # taid.py:12
    alpha: float = 5e-4  # taid.py:13: step size of the adaptive update
    beta: float = 0.99  # taid.py:14: momentum of the relative loss change
    adaptive: bool = True  # taid.py:15 disable_adaptive=False; False gives t = t_lin
    distil_ratio: float = 1.0  # loss.py:21 and arguments.py --distil_ratio default 1.0: no CE term

    def __post_init__(self) -> None:
        # taid.py:19-21 asserts these ranges (t_end >= t_start is ours)
        if not 0.0 <= self.t_start < 1.0:
            raise ConfigError(f"config key 'method_config.taid.t_start': must be in [0, 1), got {self.t_start}")
        if not 0.0 < self.t_end <= 1.0 or self.t_end < self.t_start:
            raise ConfigError(f"config key 'method_config.taid.t_end': must be in (0, 1] and >= t_start "
                              f"({self.t_start}), got {self.t_end}")
        check_range("alpha", self.alpha, 0.0, 1.0, "taid")
        check_range("beta", self.beta, 0.0, 1.0, "taid")
        check_range("distil_ratio", self.distil_ratio, 0.0, 1.0, "taid")


def token_taid(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """-sum_v r log q per position, r = softmax((1 - t) sg(z_s) + t z_t); fp32, shared support."""
    zs, zt = student_logits.float(), teacher_logits.float()
    # endpoints take one side alone: 0 * (-inf) would be NaN for a banned token
    target = zs.detach() if t == 0.0 else zt if t == 1.0 else (1 - t) * zs.detach() + t * zt
    log_r, log_q = torch.log_softmax(target, -1), torch.log_softmax(zs, -1)
    ok = (log_r > float("-inf")) & (log_q > float("-inf"))  # r = 0 adds 0; r > 0 = q is +inf, left out
    zero = torch.zeros_like(log_q)
    return -torch.where(ok, torch.where(ok, log_r, zero).exp() * torch.where(ok, log_q, zero), zero).sum(-1)


def taid_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, t: float) -> torch.Tensor:
    """J: the token mean of `token_taid` over the response tokens of the batch."""
    return masked_token_loss(token_taid, student_logits, teacher_logits, mask, float(t))


def next_t(cfg: TAIDConfig, t: float, momentum: float, prev: float | None, loss: float, step: int,
           total: int) -> tuple[float, float, float]:
    """(t, momentum, prev_loss) after a step whose objective was `loss`; `step` is its 0-based index."""
    if prev is None:  # the first step only records its loss (taid.py:41-43, prev_loss starts at inf)
        return t, momentum, loss
    momentum = cfg.beta * momentum + (1 - cfg.beta) * (prev - loss) / (prev + 1e-15)
    t_lin = cfg.t_start + (cfg.t_end - cfg.t_start) * step / total
    if not cfg.adaptive:
        return t_lin, momentum, loss
    delta = cfg.alpha * (1 / (1 + math.exp(-momentum))) * (1 - t)
    return min(cfg.t_end, max(t_lin, t + delta)), momentum, loss


@METHODS.register("taid")
class TAID(Method):
    description = "TAID: CE to a teacher-student logit interpolation, t adaptive from 0.4 to 1, on gold responses"
    Config = TAIDConfig
    requires_teacher = True

    def train(self, ctx: MethodContext) -> None:
        cfg = self.config
        total = max(1, ctx.train_cfg.steps)
        acc = ctx.trainer.accelerator

        def step(k: int, rb: ResumableBatches) -> Batch:
            st = rb.state
            if not st:
                st.update(t=cfg.t_start, momentum=0.0, prev=None, j_sum=0.0, j_tokens=0.0)
            if k > 0:  # step k-1 is done: its J moves t once
                js = [st["j_sum"], st["j_tokens"]]
                if acc.num_processes > 1:
                    js = acc.reduce(torch.tensor(js, dtype=torch.float64, device=ctx.device), reduction="sum").tolist()
                j = js[0] / max(js[1], 1.0)
                st["t"], st["momentum"], st["prev"] = next_t(cfg, st["t"], st["momentum"], st["prev"], j, k - 1, total)
            st["j_sum"] = st["j_tokens"] = 0.0
            return ctx.encode(rb.draw("examples"))

        batches = ResumableBatches(step, examples=ctx.example_batches())

        def loss_fn(batch: Batch) -> LossOutput:
            st = batches.state
            s = ctx.outputs(ctx.student, batch)
            j = ctx.divergence(token_taid, s, ctx.teacher_outputs(batch), batch.loss_mask, float(st["t"]))
            n = float(batch.n_tokens)
            st["j_sum"] += float(j.detach()) * n
            st["j_tokens"] += n
            logs = {"taid": j.item(), "t": st["t"]}
            loss = j
            if cfg.distil_ratio < 1:
                ce = ctx.cross_entropy(s, batch.labels)
                loss = cfg.distil_ratio * j + (1 - cfg.distil_ratio) * ce
                logs["ce"] = ce.item()
            return LossOutput(loss, logs)

        ctx.fit(loss_fn, batches)
