"""DistiLLM-2 (Ko et al., ICML 2025, arXiv 2503.07067): contrastive skew KL on teacher and student responses.

Data source: every prompt (train prompts and, when the run uses them, the unlabeled ones) gets two
responses. y_t is the teacher's (the cached teacher-samples stage, the SeqKD data); y_s is the current student's, sampled at temperature 0.8 / top-p 0.95 (upstream
generate_vllm.py:23-29). It starts from the SFT student, as the paper does.

Divergence: skew forward KL on y_t, SKL_a = sum_v p [log p - log(a p + (1-a) q)], gradient through q
in the mixture (distillm_trainer.py:1162); skew reverse KL on y_s,
SRKL_a = sum_v q [log q - log((1-a) p + a sg(q))], the student part of the mixture DETACHED
(distillm_trainer.py:1196).

Update rule: L = mean over prompts of (1 - beta) SeqMean_{y_t}(SKL) + beta SeqMean_{y_s}(SRKL) (paper Eq. 2;
each response is averaged over its own tokens). Upstream writes (2 - beta') chosen + beta' rejected with
beta' = 2 beta (trainer:1078, 1298, 1347): twice our value, the same minimiser.

Schedules, both off by default because the released trainer hard-codes them off (trainer:507-508):
- `update_alpha`: the per-response alpha curriculum, alpha = clip(1 - (1 - a0) m / (g + 1e-5), 0.01, a0)
  with g the response's gap in geometric-mean token probability (teacher minus student on y_t,
  student minus teacher on y_s) and m the mean gap of that response type. Each response uses its own
  gap, as the code does (the paper's Alg. 1 line 11 swaps them, which reads as a typo).
- `gradual_beta`: beta = (1 + 0.5 min(1, 2 step / steps)) / 2, 0.5 -> 0.75 over the first half
  (upstream `gradual_beta`).

Deviations, recorded:
- Student responses are drawn for a step's prompts when that step visits them (seeded per step) rather
  than for the whole prompt set at the start of each epoch (Alg. 1 lines 3-6). Each prompt still gets
  one fresh student response per epoch, from a student at most one epoch newer, and a resumed run
  redraws exactly what it lost.
- m is the mean gap over the previous epoch (no curriculum in epoch 1, as Table 11 says). Upstream
  reads the mean of its logging window and, with the update on, silently falls back to a0 because it
  reads the wrong metrics dict (reference sota-methods.md §1e); we implement the paper's intent.
- Teacher responses use the benchmark's teacher-samples stage (eval decoding) instead of T = 0.8.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from kdbench.data import collate, encode_pair
from kdbench.method import (Batch, METHODS, Method, MethodConfig, MethodContext, LossOutput, ResumableBatches,
                            check_range, gather_logprobs)

NEG_INF = float("-inf")
ALPHA_MIN = 0.01  # lower clip of the curriculum (App. B.3; distillm_trainer.py:1151, 1185)
GAP_EPS = 1e-5  # distillm_trainer.py:1151


@dataclass
class DistiLLM2Config(MethodConfig):
    alpha: float = 0.1  # a0, the skew (Table 11; distillm_trainer.py:506)
    beta: float = 0.5  # beta0, weight of the SRKL term (Table 11)
    update_alpha: bool = False  # alpha curriculum (upstream hard-codes False, trainer:507)
    gradual_beta: bool = False  # beta 0.5 -> 0.75 schedule (upstream hard-codes False, trainer:508)
    temperature: float = 0.8  # student-response sampling (generate/generate_vllm.py:23-29)
    top_p: float = 0.95  # idem

    def __post_init__(self) -> None:
        check_range("alpha", self.alpha, ALPHA_MIN, 1.0, "distillm2")
        check_range("beta", self.beta, 0.0, 1.0, "distillm2")
        check_range("temperature", self.temperature, 1e-3, 100.0, "distillm2")
        check_range("top_p", self.top_p, 1e-6, 1.0, "distillm2")


# ---------------------------------------------------------------------------------------------- pure maths


def _mix(log_a: torch.Tensor, log_b: torch.Tensor, w_a: torch.Tensor) -> torch.Tensor:
    """log(w_a a + (1 - w_a) b) per row weight w_a [N] in (0, 1]; entries where both terms are 0
    stay -inf without a NaN in the backward pass (as kdbench.divergences does)."""
    w = w_a.float()[:, None]
    x, y = log_a + w.log(), log_b + torch.log1p(-w)
    both = (x == NEG_INF) & (y == NEG_INF)
    out = torch.logaddexp(torch.where(both, torch.zeros_like(x), x), torch.where(both, torch.zeros_like(y), y))
    return torch.where(both, torch.full_like(out, NEG_INF), out)


def _kl(log_w: torch.Tensor, log_o: torch.Tensor) -> torch.Tensor:
    """sum_v w (log w - log o); entries with w = 0 give 0, entries with o = 0 < w are left out (the
    kdbench.divergences convention for -inf logits)."""
    ok = (log_w > NEG_INF) & (log_o > NEG_INF)
    zero = torch.zeros_like(log_w)
    lw, lo = torch.where(ok, log_w, zero), torch.where(ok, log_o, zero)
    return torch.where(ok, lw.exp() * (lw - lo), zero).sum(-1)


def _seq_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean over masked-in positions [B] (a row without tokens gives 0)."""
    m = mask.float()
    return torch.where(m > 0, values, torch.zeros_like(values)).mul(m).sum(-1) / m.sum(-1).clamp(min=1)


def token_skl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """SKL_a = sum_v p [log p - log(a p + (1 - a) q)] per position, logits [N, V], alpha [N]."""
    lq = torch.log_softmax(student_logits.float(), -1)
    lp = torch.log_softmax(teacher_logits.float(), -1)
    return _kl(lp, _mix(lp, lq, alpha))


def token_srkl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """SRKL_a = sum_v q [log q - log((1 - a) p + a sg(q))] per position; q detached inside the mixture."""
    lq = torch.log_softmax(student_logits.float(), -1)
    lp = torch.log_softmax(teacher_logits.float(), -1)
    return _kl(lq, _mix(lq.detach(), lp, alpha))


def rows_loss(token_fn, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
              alpha: torch.Tensor) -> torch.Tensor:
    """SeqMean of token_fn for each row [B]; alpha [B] is the row's skew."""
    keep = mask > 0
    vals = torch.zeros(mask.shape, dtype=torch.float32, device=student_logits.device)
    a = alpha.float()[:, None].expand(mask.shape)[keep]
    vals = vals.masked_scatter(keep, token_fn(student_logits[keep], teacher_logits[keep], a))
    return _seq_mean(vals, mask)


def distillm2_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                   is_student_response: torch.Tensor, alpha: torch.Tensor, beta: float) -> torch.Tensor:
    """mean over prompts of (1 - beta) SKL on teacher rows + beta SRKL on student rows.

    Rows come in pairs (one teacher and one student response per prompt), so the mean over prompts
    is the sum over rows divided by half their number."""
    s_rows = is_student_response.bool()
    skl = rows_loss(token_skl, student_logits, teacher_logits, mask * (~s_rows)[:, None], alpha)
    srkl = rows_loss(token_srkl, student_logits, teacher_logits, mask * s_rows[:, None], alpha)
    per_row = torch.where(s_rows, beta * srkl, (1 - beta) * skl)
    return per_row.sum() / (per_row.shape[0] / 2)


def curriculum_alpha(gap: torch.Tensor, mean_gap, alpha0: float) -> torch.Tensor:
    """alpha = clip(1 - (1 - a0) m / (g + 1e-5), 0.01, a0) (Alg. 1; distillm_trainer.py:1151, 1185)."""
    raw = 1 - (1 - alpha0) * mean_gap / (gap.float() + GAP_EPS)
    return raw.clamp(ALPHA_MIN, alpha0)


def gradual_beta(step: int, total: int) -> float:
    """Upstream `gradual_beta`: (1 + 0.5 min(1, 2 step / total)) / 2, i.e. 0.5 -> 0.75."""
    return (1 + 0.5 * min(1.0, 2 * step / max(total, 1))) / 2


def response_gap(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 mask: torch.Tensor, is_student_response: torch.Tensor) -> torch.Tensor:
    """g per row: geometric-mean token probability of the response, teacher minus student on teacher
    responses and student minus teacher on student responses (trainer:1149, 1183)."""
    tgt = labels.clamp(min=0)
    pq = _seq_mean(gather_logprobs(student_logits.float(), tgt), mask).exp()
    pp = _seq_mean(gather_logprobs(teacher_logits.float(), tgt), mask).exp()
    return torch.where(is_student_response.bool(), pq - pp, pp - pq)


# ---------------------------------------------------------------------------------------------- method


@METHODS.register("distillm2")
class DistiLLM2(Method):
    description = "DistiLLM-2: skew KL (0.1) on teacher responses + skew reverse KL on fresh student responses"
    Config = DistiLLM2Config
    requires_teacher = True
    student_init = "sft"  # the paper distils an SFT'd student
    budget = "on_policy"  # samples the student every step

    def train(self, ctx: MethodContext) -> None:
        cfg = self.config
        pairs = ctx.teacher_samples()  # target = the teacher's response
        B = ctx.train_cfg.batch_size
        per_epoch = max(1, len(pairs) // B)
        total = max(1, ctx.train_cfg.steps)
        scfg = dataclasses.replace(ctx.sampling, temperature=cfg.temperature, top_p=cfg.top_p)

        def step(k: int, rb: ResumableBatches) -> Batch:
            st = rb.state
            if not st:  # gap sums of the running epoch, and the previous epoch's mean gap per role
                st.update(sums=[0.0, 0.0], counts=[0, 0], mean=None)
            if k > 0 and k % per_epoch == 0 and cfg.update_alpha:
                sums, counts = list(st["sums"]), list(st["counts"])
                acc = ctx.trainer.accelerator
                if acc.num_processes > 1:  # each rank summed the gaps of its own rows
                    v = acc.reduce(torch.tensor(sums + counts, dtype=torch.float64, device=ctx.device),
                                   reduction="sum").tolist()
                    sums, counts = v[:2], v[2:]
                st["mean"] = [s / max(c, 1) for s, c in zip(sums, counts)]
                st["sums"], st["counts"] = [0.0, 0.0], [0, 0]
            exs = rb.draw("examples")
            teacher_seqs = [encode_pair(ctx.tokenizer, ex.prompt, ex.target, ctx.max_length, ctx.max_prompt_length)
                            for ex in exs]
            ro = ctx.sample(ctx.student, exs, seed=ctx.step_seed(k), cfg=scfg)
            b = collate(teacher_seqs + list(zip(ro.prompt_ids, ro.response_ids)), ctx.pad_id)
            n = len(exs)
            b.extras["student_response"] = torch.cat([torch.zeros(n), torch.ones(n)])
            beta = gradual_beta(k, total) if cfg.gradual_beta else cfg.beta
            b.extras["beta"] = torch.full((2 * n,), beta)
            return b

        def loss_fn(batch: Batch) -> LossOutput:
            s = ctx.logits(ctx.student, batch)
            t = ctx.teacher_logits(batch)
            role = batch.extras["student_response"]
            alpha = torch.full_like(role, cfg.alpha)
            logs = {}
            if cfg.update_alpha:
                with torch.no_grad():
                    gap = response_gap(s.detach(), t, batch.labels, batch.loss_mask, role)
                st = rb.state
                for r in (0, 1):
                    sel = role == r
                    st["sums"][r] += float(gap[sel].sum())
                    st["counts"][r] += int(sel.sum())
                if st["mean"] is not None:
                    m = torch.tensor(st["mean"], device=role.device)[role.long()]
                    alpha = curriculum_alpha(gap, m, cfg.alpha)
                logs["alpha"] = float(alpha.mean())
            beta = float(batch.extras["beta"][0])
            loss = distillm2_loss(s, t, batch.loss_mask, role, alpha, beta)
            return LossOutput(loss, {"distillm2": float(loss.detach()), "beta": beta, **logs})

        rb = ResumableBatches(step, examples=ctx.example_batches(pairs))
        ctx.fit(loss_fn, rb)
