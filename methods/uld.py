"""ULD: Universal Logit Distillation (Boizard et al., 2024, arXiv 2402.12030), across tokenizers.

Data source: the cached teacher samples (ULD distils on teacher-generated answers); `data: gold` uses
the gold responses. Every text is tokenized twice, once by the student's tokenizer and once by the
teacher's, and each side is scored by its own model.

Divergence: the sorted-probability L1, sum_k |q_(k) - p_(k)| between the two next-token distributions
each sorted in descending order and zero-padded to the larger vocabulary (Wasserstein-1 under a
uniform cost; needs no vocabulary map). It ignores which token carries the mass, so the student's
cross-entropy on its own tokens anchors token identity.

Update rule: L = ce_weight * CE(student) + distil_weight * ULD, ULD = mean over sequences of the mean
over aligned groups of the sorted L1 (llm-recipes models/distillation_model.py:37-175; distil_factor
1.5, configs/distillation.py:16; cross-entropy weight 1, the `DistillationLoss` default).

Alignment (`alignment`):
- "spans" (default): the two tokenizations are aligned by byte spans (kdbench.token_alignment, as
  TRL's GOLD `use_extended_uld`). A group of several tokens on one side is merged into one
  distribution, GOLD's "observed" rule: the distribution at the group's first token times the
  probabilities the model gives the group's later tokens (unnormalised). Our logits are aligned with
  the labels, so the first token's distribution is the one that predicts it (GOLD's default slices
  one position late; its opt-in "bayesian" fix reads the same positions as we do). The EOS tokens of
  both sides form a last group when neither response was cut.
- "positional": the original ULD: the k-th student response token against the k-th teacher one,
  cut to the shorter; the student's EOS dropped, the teacher's kept (llm-recipes train_utils.py:52).

With one shared tokenizer every span group is a single token and the loss is the per-position sorted
L1. The runner lets teacher and student differ in tokenizer for this method (`cross_tokenizer`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from kdbench.data import IGNORE, Batch, collate
from kdbench.method import (METHODS, Method, MethodConfig, MethodContext, LossOutput, check_choice, check_range,
                            cross_entropy)
from kdbench.schema import Example
from kdbench.token_alignment import align_spans, encode_with_spans, positional_groups


@dataclass
class ULDConfig(MethodConfig):
    distil_weight: float = 1.5  # lambda, llm-recipes configs/distillation.py:16 (distil_factor)
    ce_weight: float = 1.0  # llm-recipes DistillationLoss default
    alignment: str = "spans"  # spans (byte offsets, GOLD) | positional (original ULD truncation)
    data: str = "teacher"  # teacher samples (ULD's setting) | gold

    def __post_init__(self) -> None:
        check_range("distil_weight", self.distil_weight, 0.0, 1e4, "uld")
        check_range("ce_weight", self.ce_weight, 0.0, 1e4, "uld")
        check_choice("alignment", self.alignment, ("spans", "positional"), "uld")
        check_choice("data", self.data, ("teacher", "gold"), "uld")


# ---------------------------------------------------------------------------------------------- pure maths


def sorted_l1(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """sum_k |q_(k) - p_(k)| per row for [N, Vq] and [N, Vp] (log-)probabilities, both sorted
    descending and the smaller vocabulary zero-padded."""
    q = log_q.float().exp().sort(-1, descending=True).values
    p = log_p.float().exp().sort(-1, descending=True).values
    V = max(q.shape[-1], p.shape[-1])
    q = torch.nn.functional.pad(q, (0, V - q.shape[-1]))
    p = torch.nn.functional.pad(p, (0, V - p.shape[-1]))
    return (q - p).abs().sum(-1)


def merged_logprobs(logits: torch.Tensor, labels: torch.Tensor, first: torch.Tensor,
                    group: torch.Tensor) -> torch.Tensor:
    """Group distributions [B, G, V] in log space: log p at the group's first position plus the
    log-probs of the group's later tokens ("observed" merge).

    first [B, G]: the position whose logits predict the group's first token; group [B, L]: the
    group of the token each position predicts, -1 for none."""
    lp = torch.log_softmax(logits.float(), -1)
    ly = lp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    B, L, V = lp.shape
    G = first.shape[1]
    pos = torch.arange(L, device=lp.device).expand(B, L)
    rest = (group >= 0) & (pos != first.gather(1, group.clamp(min=0).clamp(max=max(G - 1, 0))))
    extra = torch.zeros(B, G + 1, device=lp.device).scatter_add(1, torch.where(rest, group, G),
                                                                torch.where(rest, ly, torch.zeros_like(ly)))[:, :G]
    return lp.gather(1, first.unsqueeze(-1).expand(B, G, V)) + extra.unsqueeze(-1)


def uld_distance(student_logits: torch.Tensor, teacher_logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean over rows (with at least one group) of the mean sorted L1 over the row's groups."""
    e = batch.extras
    ms = merged_logprobs(student_logits, batch.labels, e["s_first"], e["s_group"])
    with torch.no_grad():
        mt = merged_logprobs(teacher_logits, e["t_labels"], e["t_first"], e["t_group"])
    B, G = e["g_mask"].shape
    d = sorted_l1(ms.reshape(B * G, -1), mt.reshape(B * G, -1)).view(B, G)
    m = e["g_mask"].float()
    n = m.sum(-1)
    rows = torch.where(m > 0, d, torch.zeros_like(d)).sum(-1) / n.clamp(min=1)
    has = (n > 0).float()
    return (rows * has).sum() / has.sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------- batches


def pair_batch(student_tok, teacher_tok, examples: Sequence[Example], responses: Sequence[str], max_length: int,
               max_prompt_length: int, alignment: str = "spans") -> Batch:
    """The student Batch of (prompt, response) with the teacher's tokenisation and the alignment groups
    in its extras (per row, so micro-batch splitting keeps them): t_input_ids, t_attention_mask,
    t_labels, s_first/t_first [B, G], s_group/t_group [B, L], g_mask [B, G]."""
    s_seqs, t_seqs, groups = [], [], []
    for ex, resp in zip(examples, responses):
        ps, rs, s_sp = encode_with_spans(student_tok, ex.prompt, resp, max_length, max_prompt_length)
        pt, rt, t_sp = encode_with_spans(teacher_tok, ex.prompt, resp, max_length, max_prompt_length)
        s_eos = len(rs) > len(s_sp)  # EOS survived truncation
        t_eos = len(rt) > len(t_sp)
        if alignment == "positional":
            g = positional_groups(len(s_sp), len(t_sp) + int(t_eos))
        else:
            end = min(s_sp[-1][1] if s_sp else 0, t_sp[-1][1] if t_sp else 0)  # common extent after truncation
            s_keep, t_keep = [sp for sp in s_sp if sp[1] <= end], [sp for sp in t_sp if sp[1] <= end]
            g = align_spans(s_keep, t_keep)
            if s_eos and t_eos and len(s_keep) == len(s_sp) and len(t_keep) == len(t_sp):
                g.append(([len(s_sp)], [len(t_sp)]))
        s_seqs.append((ps, rs))
        t_seqs.append((pt, rt))
        groups.append(g)
    sb, tb = collate(s_seqs, student_tok.pad_token_id), collate(t_seqs, teacher_tok.pad_token_id)
    G = max(1, max(len(g) for g in groups))
    B = len(groups)
    first = {"s": torch.zeros(B, G, dtype=torch.long), "t": torch.zeros(B, G, dtype=torch.long)}
    member = {"s": torch.full(sb.labels.shape, -1, dtype=torch.long), "t": torch.full(tb.labels.shape, -1, dtype=torch.long)}
    g_mask = torch.zeros(B, G)
    for b, g in enumerate(groups):
        off = {"s": len(s_seqs[b][0]) - 1, "t": len(t_seqs[b][0]) - 1}  # label position of response token 0
        for k, (si, ti) in enumerate(g):
            for side, idx in (("s", si), ("t", ti)):
                pos = [off[side] + i for i in idx]
                first[side][b, k] = pos[0]
                member[side][b, pos] = k
            g_mask[b, k] = 1.0
    for side, lab in (("s", sb.labels), ("t", tb.labels)):  # positions without a label never join a group
        member[side] = torch.where(lab == IGNORE, torch.full_like(member[side], -1), member[side])
    sb.extras.update(t_input_ids=tb.input_ids, t_attention_mask=tb.attention_mask, t_labels=tb.labels,
                     s_first=first["s"], t_first=first["t"], s_group=member["s"], t_group=member["t"], g_mask=g_mask)
    return sb


def teacher_view(batch: Batch) -> Batch:
    e = batch.extras
    return Batch(e["t_input_ids"], e["t_attention_mask"], e["t_labels"])


# ---------------------------------------------------------------------------------------------- method


@METHODS.register("uld")
class ULD(Method):
    description = "ULD: CE + 1.5 x sorted-probability L1 on teacher samples, aligned by byte spans (any tokenizers)"
    Config = ULDConfig
    requires_teacher = True
    cross_tokenizer = True  # teacher and student may use different tokenizers

    def train(self, ctx: MethodContext) -> None:
        cfg = self.config
        # teacher samples cover the unlabeled prompts too; "gold" takes the teacher's sample only there
        data = ctx.teacher_samples() if cfg.data == "teacher" else ctx.guided_examples()

        def batches():
            for exs in ctx.example_batches(data):
                yield pair_batch(ctx.tokenizer, ctx.teacher_tokenizer, exs, [ex.target for ex in exs],
                                 ctx.max_length, ctx.max_prompt_length, cfg.alignment)

        def loss_fn(batch: Batch) -> LossOutput:
            s = ctx.logits(ctx.student, batch)
            t = ctx.teacher_logits(teacher_view(batch))
            batch = batch.to(s.device)
            uld = uld_distance(s, t, batch)
            ce = cross_entropy(s, batch.labels)
            loss = cfg.ce_weight * ce + cfg.distil_weight * uld
            return LossOutput(loss, {"uld": float(uld.detach()), "ce": float(ce.detach())})

        ctx.fit(loss_fn, batches())
