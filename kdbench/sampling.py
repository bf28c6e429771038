"""Batched, seeded sampling with a KV cache, and teacher-mixed sampling over two models.

Our own loop rather than `generate()`: teacher-mixed sampling (MiniLLM) draws each token from
(1 - alpha) * q_student + alpha * p_teacher, and speculative-KD sampling (SKD) lets the student
propose each token and the teacher replace it with its own sample when it is outside the teacher's
top-K; both need both models stepping together with their own caches; upstream needed a forked transformers for this, we need ~40 lines. Plain sampling goes
through the same loop so every number comes from one code path.

Prompts are left-padded; position ids come from the attention mask so left padding does not
shift positions (GPT-2 and Llama-style models both accept `position_ids`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    no_repeat_ngram_size: int = 0
    # the tokenizer's size: logits beyond it (padded embedding rows) are not tokens and never drawn
    vocab_size: int | None = None


@dataclass
class Rollout:
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # generated tokens, EOS included when produced
    # per response token (mixed sampling only): log q_student(y), log p_teacher(y), log mix(y)
    student_logp: list[list[float]] = field(default_factory=list)
    teacher_logp: list[list[float]] = field(default_factory=list)
    mix_logp: list[list[float]] = field(default_factory=list)
    # per response token (SKD sampling only): 1.0 where the teacher replaced the student's proposal
    replaced: list[list[float]] = field(default_factory=list)

    def texts(self, tokenizer) -> list[str]:
        return [decode_response(tokenizer, r) for r in self.response_ids]

    @property
    def n_generated(self) -> int:
        return sum(len(r) for r in self.response_ids)


def decode_response(tokenizer, ids: Sequence[int]) -> str:
    ids = list(ids)
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, top-k (0 = off), top-p (1 = off). Returns fp32 logits with -inf filtered."""
    logits = logits.float() / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) > cfg.top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return logits


def _ban_repeated_ngrams(logits: torch.Tensor, seqs: list[list[int]], n: int) -> torch.Tensor:
    """A copy of `logits` with -inf on every token that would complete an n-gram already in `seq`
    (a copy: the input may be a model's cached output or an expanded view)."""
    logits = logits.clone()
    for b, seq in enumerate(seqs):
        if len(seq) < n:
            continue
        prefix = tuple(seq[-(n - 1):]) if n > 1 else ()
        banned = {seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i: i + n - 1]) == prefix}
        if banned:
            logits[b, list(banned)] = float("-inf")
    return logits


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int):
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(prompts), L), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, L - len(p):] = torch.tensor(list(p), dtype=torch.long)
            att[i, L - len(p):] = 1
    return ids, att


def _cache_kwarg(model) -> str:
    """transformers renamed `past_key_values` to `cache` (5.x); support both."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper: its model's
    params = inspect.signature(type(inner).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class _Stepper:
    """Runs one model token by token with its KV cache."""

    def __init__(self, model, ids, att):
        self.model = model
        self.kw = _cache_kwarg(model)
        self.device = next(model.parameters()).device
        self.att = att.to(self.device)
        pos = (self.att.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids.to(self.device), attention_mask=self.att, position_ids=pos, use_cache=True)
        self.past = out[self.kw]
        self.logits = out.logits[:, -1, :].float()
        self.next_pos = pos[:, -1:] + 1

    def step(self, tokens: torch.Tensor) -> None:
        self.att = torch.cat([self.att, torch.ones_like(self.att[:, :1])], dim=1)
        out = self.model(input_ids=tokens.to(self.device)[:, None], attention_mask=self.att,
                         position_ids=self.next_pos, use_cache=True, **{self.kw: self.past})
        self.past = out[self.kw]
        self.logits = out.logits[:, -1, :].float()
        self.next_pos = self.next_pos + 1


def _draw(probs: torch.Tensor, generator, rows: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row [B]: from one generator, or from one generator per row (an object with
    `draw(probs, rows)`, kdbench.row_sampling.RowGenerators) drawing only the `rows` asked for."""
    if isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return generator.draw(probs, rows)


@torch.no_grad()
def sample_batch(model, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, eos_id: int, pad_id: int,
                 generator, mix_model=None, mix_alpha: float = 0.0, skd_topk: int = 0) -> Rollout:
    """Sample one response per prompt. With `mix_model` (the teacher) and alpha > 0, each token is
    drawn from (1 - alpha) * q + alpha * p and the per-token log-probs of q, p and the mixture
    are returned (importance weight w_t = q(y_t) / mix(y_t)).

    With `mix_model` and skd_topk = K > 0 (speculative KD, Xu et al. ICLR 2025, Alg. 1): the student
    proposes y ~ q; if y is not among the K largest RAW teacher logits (ties at the K-th included),
    the teacher's sample y ~ p replaces it. The token then has probability
    q(y) 1[y in TopK] + (sum of q outside TopK) p(y), returned as mix_logp, and `replaced` marks the
    replaced tokens. The teacher is drawn only when some row rejects, so K >= |V| reproduces plain
    student sampling under the same generator."""
    was_training = model.training
    model.eval()
    ids, att = _left_pad(prompts, pad_id)
    student = _Stepper(model, ids, att)
    teacher = _Stepper(mix_model, ids, att) if mix_model is not None else None
    B = len(prompts)
    done = torch.zeros(B, dtype=torch.bool)
    out: list[list[int]] = [[] for _ in range(B)]
    s_lp: list[list[float]] = [[] for _ in range(B)]
    t_lp: list[list[float]] = [[] for _ in range(B)]
    m_lp: list[list[float]] = [[] for _ in range(B)]
    rep: list[list[float]] = [[] for _ in range(B)]
    for _ in range(cfg.max_new_tokens):
        logits = student.logits.cpu()
        t_logits = teacher.logits.cpu() if teacher is not None else None
        if t_logits is not None and t_logits.shape[-1] != logits.shape[-1]:
            # embeddings padded to different sizes: only the shared leading ids are real tokens of both
            n = min(logits.shape[-1], t_logits.shape[-1])
            logits, t_logits = logits[..., :n], t_logits[..., :n]
        if cfg.vocab_size is not None and logits.shape[-1] > cfg.vocab_size:
            logits = logits[..., :cfg.vocab_size]
            t_logits = t_logits[..., :cfg.vocab_size] if t_logits is not None else None
        if cfg.no_repeat_ngram_size:
            # banned on both models, so the mixture never draws a banned token and every logged
            # log-prob (q, p, mix) is of the same filtered distributions
            seqs = [list(p) + o for p, o in zip(prompts, out)]
            logits = _ban_repeated_ngrams(logits, seqs, cfg.no_repeat_ngram_size)
            if t_logits is not None:
                t_logits = _ban_repeated_ngrams(t_logits, seqs, cfg.no_repeat_ngram_size)
        q_logp = torch.log_softmax(filter_logits(logits, cfg), -1)
        replaced = None
        if teacher is not None and skd_topk > 0:
            p_logp = torch.log_softmax(filter_logits(t_logits, cfg), -1)
            kth = torch.topk(t_logits.float(), min(skd_topk, t_logits.shape[-1]), dim=-1).values[:, -1:]
            in_top = t_logits.float() >= kth
            draft = _draw(q_logp.exp(), generator)
            replaced = ~in_top.gather(1, draft[:, None]).squeeze(1)
            tok = draft
            if bool(replaced.any()):
                tok = torch.where(replaced, _draw(p_logp.exp(), generator, replaced), draft)
            q = q_logp.exp()
            mix = (q * in_top + (q * ~in_top).sum(-1, keepdim=True) * p_logp.exp()).log()
        elif teacher is not None:
            p_logp = torch.log_softmax(filter_logits(t_logits, cfg), -1)
            # log((1-a) q + a p) computed stably in log space
            mix = torch.logaddexp(q_logp + torch.log1p(torch.tensor(-mix_alpha)), p_logp + torch.log(torch.tensor(mix_alpha))) \
                if 0 < mix_alpha < 1 else (p_logp if mix_alpha >= 1 else q_logp)
        else:
            mix = q_logp
        if replaced is None:
            tok = _draw(mix.exp(), generator)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        for b in range(B):
            if not done[b]:
                y = int(tok[b])
                out[b].append(y)
                if teacher is not None:
                    s_lp[b].append(float(q_logp[b, y]))
                    t_lp[b].append(float(p_logp[b, y]))
                    m_lp[b].append(float(mix[b, y]))
                if replaced is not None:
                    rep[b].append(float(replaced[b]))
        done = done | (tok == eos_id)
        if bool(done.all()):
            break
        student.step(tok)
        if teacher is not None:
            teacher.step(tok)
    if was_training:
        model.train()
    return Rollout([list(p) for p in prompts], out, s_lp, t_lp, m_lp, rep if skd_topk > 0 else [])


def sample(model, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, eos_id: int, pad_id: int, seed: int,
           batch_size: int = 32, mix_model=None, mix_alpha: float = 0.0, progress=None, skd_topk: int = 0) -> Rollout:
    """Sample in batches with one seeded generator: the same seed gives the same samples."""
    g = torch.Generator().manual_seed(seed)
    total = Rollout([], [], [], [], [], [])
    # Sort by prompt length to waste less compute on padding; restore order afterwards.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        r = sample_batch(model, [prompts[i] for i in idx], cfg, eos_id, pad_id, g, mix_model, mix_alpha, skd_topk)
        total.prompt_ids += r.prompt_ids
        total.response_ids += r.response_ids
        total.student_logp += r.student_logp
        total.teacher_logp += r.teacher_logp
        total.mix_logp += r.mix_logp
        total.replaced += r.replaced
        if progress is not None:
            progress.update(len(idx))
    inv = {j: i for i, j in enumerate(order)}
    re = [inv[i] for i in range(len(prompts))]
    pick = lambda xs: [xs[i] for i in re] if xs else xs  # noqa: E731
    return Rollout(pick(total.prompt_ids), pick(total.response_ids), pick(total.student_logp),
                   pick(total.teacher_logp), pick(total.mix_logp), pick(total.replaced))
