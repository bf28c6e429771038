"""Batched, seeded sampling with a KV cache, and teacher-mixed sampling over two models.

Our own loop rather than `generate()`: teacher-mixed sampling (MiniLLM) draws each token from
(1 - alpha) * q_student + alpha * p_teacher, and speculative-KD sampling (SKD) lets the student
propose each token and the teacher replace it with its own sample when it is outside the teacher's
top-K; both need both models stepping together with their own caches; upstream needed a forked transformers for this, we need ~40 lines. Plain sampling goes
through the same loop so every number comes from one code path.

Prompts are left-padded; position ids come from the attention mask so left padding does not
shift positions (GPT-2 and Llama-style models both accept `position_ids`).

Speed (issue 17; benchmarks/bench_sampling.py measures it against the old loop and HF `generate`): the
prompt forward keeps only the last position's logits; transformers models decode on a StaticCache and
get the decode mask ready-made (no per-step concatenation of cache or mask, no mask rebuilt per step);
tokens and log-probs go into [B, max_new] tensors, not per-row Python appends; the n-gram ban is kept
incrementally. The same seed draws the same tokens as before; log-probs agree to float rounding (~1e-6:
attention over the static cache's masked slots sums in another order). GPT-2 and Llama models skip
transformers' forward altogether: kdbench.lean.decode calls their weights directly (the same arithmetic,
checked against transformers' forward): half the time per decode step at the toy sizes
(benchmarks/bench_lean.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .lean import lean_stepper


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
    if cfg.temperature != 1.0:  # dividing by 1 is exact: skip the [B, V] copy
        logits = logits.float() / cfg.temperature
    else:
        logits = logits.float()
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


class _NgramBan:
    """No-repeat n-gram blocking kept incrementally: per row, a map from each (n-1)-gram of its sequence
    (prompt + response) to the tokens that followed it. Each step adds one n-gram per live row, so the
    per-step work is O(batch), not O(batch x length) as rescanning every sequence would be."""

    def __init__(self, prompts: Sequence[Sequence[int]], n: int):
        self.n = n
        self.seqs = [list(p) for p in prompts]
        self.seen: list[dict[tuple, set[int]]] = [{} for _ in prompts]
        for seq, seen in zip(self.seqs, self.seen):
            for i in range(len(seq) - n + 1):
                seen.setdefault(tuple(seq[i: i + n - 1]), set()).add(seq[i + n - 1])

    def banned(self) -> tuple[list[int], list[int]]:
        """(rows, token ids) that would complete an n-gram already in their row."""
        rows: list[int] = []
        cols: list[int] = []
        k = self.n - 1
        for b, (seq, seen) in enumerate(zip(self.seqs, self.seen)):
            hit = seen.get(tuple(seq[len(seq) - k:]) if k else ())
            if hit:
                rows += [b] * len(hit)
                cols += hit
        return rows, cols

    def push(self, tokens: list[int], alive: list[bool]) -> None:
        n = self.n
        for seq, seen, y, a in zip(self.seqs, self.seen, tokens, alive):
            if a:
                seq.append(y)
                if len(seq) >= n:
                    seen.setdefault(tuple(seq[len(seq) - n: -1]), set()).add(y)


def _apply_ban(logits: torch.Tensor, rows: list[int], cols: list[int]) -> torch.Tensor:
    """A copy of `logits` with -inf at (rows, cols) (a copy: the input may be a model's cached output)."""
    if not rows:
        return logits
    logits = logits.clone()
    logits[rows, cols] = float("-inf")
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


def _inner(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper: its model


def _forward_params(model):
    import inspect

    return inspect.signature(type(_inner(model)).forward).parameters


def _static_cache(model, max_len: int):
    """transformers' StaticCache (preallocated keys/values, written in place) for a decoder whose layers all
    attend over the full sequence; None otherwise, and the model grows its own cache (a concatenation per
    step, O(length^2) copying over a generation)."""
    try:
        from transformers import PreTrainedModel, StaticCache
    except ImportError:
        return None
    inner = _inner(model)
    cfg = getattr(inner, "config", None)
    if not isinstance(inner, PreTrainedModel) or cfg is None or getattr(cfg, "is_encoder_decoder", False):
        return None
    try:
        cache = StaticCache(config=cfg, max_cache_len=max_len)
    except Exception:  # an architecture without a static layout: fall back to the model's own cache
        return None
    if any(getattr(cache, "is_sliding", [])) or any(getattr(cache, "is_linear", [])):
        return None
    return cache


class _Stepper:
    """Runs one model token by token: a preallocated attention mask (one column switched on per step instead
    of a concatenation), a static KV cache where the model has one, and only the last position's logits from
    the prompt's forward."""

    def __init__(self, model, ids, att, max_new: int):
        self.model = model
        params = _forward_params(model)
        self.kw = "cache" if "cache" in params else "past_key_values"  # transformers 5.x renamed it
        self.device = next(model.parameters()).device
        B, L = ids.shape
        self.n = L  # columns of the mask in use
        self.mask = torch.zeros((B, L + max_new), dtype=torch.long, device=self.device)
        self.mask[:, :L] = att.to(self.device)
        att = self.mask[:, :L]
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        self.cache = _static_cache(model, L + max_new)
        kwargs = {self.kw: self.cache} if self.cache is not None else {}
        if "logits_to_keep" in params:  # the prompt's other positions' logits are never read
            kwargs["logits_to_keep"] = 1
        out = model(input_ids=ids.to(self.device), attention_mask=att, position_ids=pos, use_cache=True, **kwargs)
        self.past = out[self.kw] if self.cache is None else self.cache
        self.logits = out.logits[:, -1, :].float()
        self.next_pos = pos[:, -1:] + 1
        # With sdpa and a static cache the mask sdpa needs at a decode step is the 2-D mask itself, [B, 1, 1, max
        # length] over the cache's slots: passed ready-made, transformers skips building it every step.
        sdpa = getattr(getattr(_inner(model), "config", None), "_attn_implementation", None) == "sdpa"
        self.mask4 = self.mask.bool()[:, None, None, :] if (self.cache is not None and sdpa) else None

    def step(self, tokens: torch.Tensor) -> None:
        self.mask[:, self.n] = 1
        if self.mask4 is not None:
            self.mask4[:, 0, 0, self.n] = True
            att = self.mask4
        else:
            att = self.mask[:, : self.n + 1]
        self.n += 1
        out = self.model(input_ids=tokens.to(self.device)[:, None], attention_mask=att,
                         position_ids=self.next_pos, use_cache=True, **{self.kw: self.past})
        if self.cache is None:
            self.past = out[self.kw]
        self.logits = out.logits[:, -1, :].float()
        self.next_pos = self.next_pos + 1


def _stepper(model, ids, att, max_new: int):
    """The lean decoder where the model's architecture has one (kdbench.lean), else transformers' forward."""
    return lean_stepper(model, ids, att, max_new) or _Stepper(model, ids, att, max_new)


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
    student sampling under the same generator.

    Per step everything is batched tensor work: tokens and log-probs go into [B, max_new] buffers, turned
    into lists once at the end."""
    was_training = model.training
    model.eval()
    ids, att = _left_pad(prompts, pad_id)
    B, T = len(prompts), cfg.max_new_tokens
    student = _stepper(model, ids, att, T)
    teacher = _stepper(mix_model, ids, att, T) if mix_model is not None else None
    done = torch.zeros(B, dtype=torch.bool)
    toks = torch.full((B, T), pad_id, dtype=torch.long)
    lengths = torch.zeros(B, dtype=torch.long)  # steps each row was still generating
    lps = torch.zeros((3, B, T)) if teacher is not None else None  # log q, log p, log mix of the drawn token
    rep = torch.zeros((B, T)) if (teacher is not None and skd_topk > 0) else None
    ban = _NgramBan(prompts, cfg.no_repeat_ngram_size) if cfg.no_repeat_ngram_size else None
    for t in range(T):
        logits = student.logits.cpu()
        t_logits = teacher.logits.cpu() if teacher is not None else None
        if t_logits is not None and t_logits.shape[-1] != logits.shape[-1]:
            # embeddings padded to different sizes: only the shared leading ids are real tokens of both
            n = min(logits.shape[-1], t_logits.shape[-1])
            logits, t_logits = logits[..., :n], t_logits[..., :n]
        if cfg.vocab_size is not None and logits.shape[-1] > cfg.vocab_size:
            logits = logits[..., :cfg.vocab_size]
            t_logits = t_logits[..., :cfg.vocab_size] if t_logits is not None else None
        if ban is not None:
            # banned on both models, so the mixture never draws a banned token and every logged
            # log-prob (q, p, mix) is of the same filtered distributions
            rows, cols = ban.banned()
            logits = _apply_ban(logits, rows, cols)
            if t_logits is not None:
                t_logits = _apply_ban(t_logits, rows, cols)
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
        alive = ~done
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        toks[:, t] = tok
        lengths += alive
        if lps is not None:
            y = tok.clamp(0, q_logp.shape[-1] - 1)[:, None]  # finished rows hold pad: gathered, never returned
            lps[0, :, t] = q_logp.gather(1, y)[:, 0]
            lps[1, :, t] = p_logp.gather(1, y)[:, 0]
            lps[2, :, t] = mix.gather(1, y)[:, 0]
        if rep is not None:
            rep[:, t] = replaced.float()
        if ban is not None:
            ban.push(tok.tolist(), alive.tolist())
        done = done | (tok == eos_id)
        if bool(done.all()) or t == T - 1:  # the last token's forward would never be read
            break
        student.step(tok)
        if teacher is not None:
            teacher.step(tok)
    if was_training:
        model.train()
    lens = lengths.tolist()
    cut = lambda x: [row[:n] for row, n in zip(x.tolist(), lens)]  # noqa: E731
    empty = lambda: [[] for _ in range(B)]  # noqa: E731  (no log-probs: one empty list per row, as before)
    s_lp, t_lp, m_lp = (cut(lps[0]), cut(lps[1]), cut(lps[2])) if lps is not None else (empty(), empty(), empty())
    rep_out = (cut(rep) if rep is not None else empty()) if skd_topk > 0 else []
    return Rollout([list(p) for p in prompts], cut(toks), s_lp, t_lp, m_lp, rep_out)


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
