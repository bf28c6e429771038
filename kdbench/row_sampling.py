"""Sampling whose every row has its own seeded generator, so the rows can be split across ranks.

`kdbench.sampling.sample` draws a whole batch from one generator: a row's tokens then depend on
which rows share its batch and on every batch sampled before it, and no rank could draw its share
of the rows and get what one process draws. Here row i of a call draws from its own generator,
seeded from (seed, i): its tokens depend only on its prompt, the model and that seed. Each rank
samples its contiguous share of the rows (the same split as `Trainer._shard`), the shares are
gathered, and every rank holds the rollout one process would have drawn: token for token, as long
as the model's logits for a row do not depend on the rows batched with it. On CPU they can differ
in the last bit (other padding lengths and batch shapes change the order of float sums), which
flips a sampled token only when a uniform draw falls within that rounding of a boundary of the
cumulative distribution (about 1e-7 per token).

Used by evaluation cells and on-policy rollouts (MethodContext.sample); the SeqKD teacher samples
(built by rank 0 alone) keep `sample`.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from . import ranks
from .sampling import Rollout, SamplingConfig, sample_batch

# recorded in the keys of eval cells and of train cells that sample: the generations changed when
# rows got their own generators (kdbench.sampling.sample draws a batch from one)
SAMPLER = "row-seeded"


def row_seed(seed: int, row: int) -> int:
    """The seed of row `row` of a call with `seed`: a hash, so (seed, row) pairs never share a stream
    (seed + row would give row 1 of seed s the stream of row 0 of seed s + 1)."""
    h = hashlib.blake2b(f"{int(seed)}:{int(row)}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class RowGenerators:
    """One generator per row; `draw` takes one token per row (only for `rows` when given, the others
    0), each from its own row's generator: one uniform u per row, and the token is the first whose
    cumulative probability exceeds u x the row's total (inverse CDF, in float64; a token of zero
    probability is never drawn).

    A row's uniforms are its generator's float64 stream drawn CHUNK at a time: `torch.rand(n)` gives
    the same numbers as n calls of `torch.rand(())` (tests/engine/test_row_sampling.py checks it), so
    a step costs a few batched ops instead of one Python call per row."""

    CHUNK = 64

    def __init__(self, seeds: Sequence[int]):
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.stream = torch.empty((len(self.gens), 0), dtype=torch.float64)  # drawn, per row
        # While every draw has taken every row (plain sampling), each row has consumed `step` numbers and a
        # draw reads one column of the stream; the first masked draw (SKD's teacher on rejects) switches to
        # per-row counts in `used`.
        self.lockstep, self.step = True, 0
        self.used = torch.zeros(len(self.gens), dtype=torch.long)  # consumed, per row (once not in lockstep)

    def _refill(self) -> None:
        more = torch.stack([torch.rand(self.CHUNK, dtype=torch.float64, generator=g) for g in self.gens])
        self.stream = torch.cat([self.stream, more], 1)

    def _next_uniforms(self, take: torch.Tensor | None) -> torch.Tensor:
        if take is None and self.lockstep:
            if self.step >= self.stream.shape[1]:
                self._refill()
            self.step += 1
            return self.stream[:, self.step - 1]
        if self.lockstep:
            self.lockstep = False
            self.used.fill_(self.step)
        if take is None:
            take = torch.ones(len(self.gens), dtype=torch.bool)
        if int(self.used.max()) >= self.stream.shape[1]:
            self._refill()
        u = self.stream.gather(1, self.used[:, None]).squeeze(1)
        self.used += take
        return torch.where(take, u, torch.zeros_like(u))

    def draw(self, probs: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        take = None if rows is None else rows.to("cpu", torch.bool)
        u = self._next_uniforms(take)
        cdf = probs.to(torch.float64).cumsum(-1)
        total = cdf[:, -1]
        if not bool(torch.isfinite(total).all() & (probs.min() >= 0)):
            raise ValueError("probability tensor contains either inf, nan or element < 0")  # as torch.multinomial
        tok = torch.searchsorted(cdf, (u * total).unsqueeze(-1), right=True).squeeze(-1)
        # u x total can round up to the total (no cdf entry exceeds it): searchsorted then returns V, and the
        # row takes its last token of positive probability. Only then can a zero-probability token come up:
        # below the total the first cdf entry above u x total is always a step up.
        past = tok >= probs.shape[-1]
        if bool(past.any()):
            last = probs.shape[-1] - 1 - (probs > 0).flip(-1).to(torch.int8).argmax(-1)
            tok = torch.where(past, last, tok)
        return tok if take is None else torch.where(take, tok, torch.zeros_like(tok))


def _sample_rows(model, prompts, rows: list[int], cfg, eos_id, pad_id, seed, batch_size, **kw) -> Rollout:
    """Rows `rows` of `prompts` (in that order), in batches of similar prompt length."""
    order = sorted(rows, key=lambda i: len(prompts[i]))
    got: dict[int, tuple] = {}
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        r = sample_batch(model, [prompts[i] for i in idx], cfg, eos_id, pad_id,
                         RowGenerators([row_seed(seed, i) for i in idx]), **kw)
        for j, i in enumerate(idx):
            got[i] = tuple(xs[j] if xs else None for xs in (r.prompt_ids, r.response_ids, r.student_logp,
                                                           r.teacher_logp, r.mix_logp, r.replaced))
    fields = list(zip(*(got[i] for i in rows))) if rows else [()] * 6
    return Rollout(*[[x for x in f if x is not None] for f in fields])


def sample_rows(model, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, eos_id: int, pad_id: int, seed: int,
                batch_size: int = 32, mix_model=None, mix_alpha: float = 0.0, skd_topk: int = 0
                ) -> tuple[Rollout, int]:
    """One response per prompt, row i from its own generator (row_seed(seed, i)); under several
    ranks each samples its share and all get the whole rollout. Returns (rollout, tokens this rank
    generated itself: its share of the cost). Every rank must call it with the same arguments."""
    n = len(prompts)
    mine = torch.arange(n).tensor_split(ranks.world())[ranks.rank()].tolist()

    def local() -> Rollout:
        return _sample_rows(model, prompts, mine, cfg, eos_id, pad_id, seed, max(1, batch_size),
                            mix_model=mix_model, mix_alpha=mix_alpha, skd_topk=skd_topk)

    if ranks.world() == 1:
        part = local()
        return part, part.n_generated
    err, part = None, None
    try:
        part = local()
    except Exception as e:  # noqa: BLE001 - every rank must still join the gather, then all raise
        err = e
    parts = ranks.gather((None, part) if err is None else (f"{type(err).__name__}: {err}", None))
    ranks.raise_agreed([p[0] for p in parts], err, "sampling")
    total = Rollout([], [], [], [], [], [])
    for _, p in parts:  # contiguous shares in rank order: the rows in their order
        for name in ("prompt_ids", "response_ids", "student_logp", "teacher_logp", "mix_logp", "replaced"):
            getattr(total, name).extend(getattr(p, name))
    return total, part.n_generated
