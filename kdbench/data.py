"""Tokenisation and batching.

Convention used everywhere: a `Batch` is right-padded; `labels[b, t]` is the token that position t
predicts (already shifted, -100 where no loss applies), so `model(input_ids).logits[b, t]` lines up
with `labels[b, t]` and `loss_mask = labels != -100`. Divergences and losses then take
`(student_logits, teacher_logits, loss_mask)` with no further shifting. Per-token extras (old
log-probs, importance weights, advantages) use the same alignment.

Responses follow MiniLLM: prompt and response are tokenised jointly and split at the prompt
length, no BOS, EOS appended to the response and trained as a target.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

IGNORE = -100


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    labels: torch.Tensor  # [B, L], shifted targets, IGNORE where no loss
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-token [B, L] or per-row [B]

    @property
    def loss_mask(self) -> torch.Tensor:
        return (self.labels != IGNORE).float()

    @property
    def n_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                     {k: v.to(device) for k, v in self.extras.items()})

    def select(self, idx) -> "Batch":
        return Batch(self.input_ids[idx], self.attention_mask[idx], self.labels[idx],
                     {k: v[idx] for k, v in self.extras.items()})

    def split(self, n: int) -> list["Batch"]:
        """n micro-batches of (nearly) equal size, in order."""
        if n <= 1:
            return [self]
        chunks = torch.arange(self.size).chunk(n)
        return [self.select(c) for c in chunks if len(c)]

    def targets(self) -> torch.Tensor:
        """labels with IGNORE replaced by 0, safe for gather()."""
        return self.labels.clamp(min=0)


def encode_pair(tokenizer, prompt: str, response: str | None, max_length: int,
                max_prompt_length: int) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids + [EOS]); response None gives prompt only."""
    p_full = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # callers drop over-long prompts first (counted); this is only a guard that keeps the cue
    p_ids = p_full[-max_prompt_length:]
    if response is None:
        return p_ids, []
    full = tokenizer(prompt + response, add_special_tokens=False)["input_ids"]
    if full[: len(p_full)] == p_full:
        r_ids = full[len(p_full):]
    else:  # the joint tokenisation merged across the boundary: encode the response alone
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    r_ids = r_ids + [tokenizer.eos_token_id]
    return p_ids, r_ids[: max(1, max_length - len(p_ids))]


def collate(seqs: Sequence[tuple[list[int], list[int]]], pad_id: int,
            token_extras: dict[str, Sequence[Sequence[float]]] | None = None) -> Batch:
    """Right-pad (prompt_ids, response_ids) pairs into a Batch. `token_extras[name][i]` holds one
    value per response token of sequence i and is aligned with labels."""
    L = max(len(p) + len(r) for p, r in seqs)
    B = len(seqs)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.long)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)
    extras = {k: torch.zeros((B, L), dtype=torch.float32) for k in (token_extras or {})}
    for i, (p, r) in enumerate(seqs):
        seq = list(p) + list(r)
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        att[i, : len(seq)] = 1
        if r:
            # position len(p)-1+j predicts r[j]
            start = len(p) - 1
            if start < 0:  # no prompt: the first response token cannot be predicted
                labels[i, : len(r) - 1] = torch.tensor(r[1:], dtype=torch.long)
            else:
                labels[i, start: start + len(r)] = torch.tensor(r, dtype=torch.long)
            for k, vals in (token_extras or {}).items():
                v = torch.tensor(list(vals[i]), dtype=torch.float32)[: len(r)]
                if start >= 0:
                    extras[k][i, start: start + len(v)] = v
    return Batch(ids, att, labels, extras)


def lm_blocks(tokenizer, texts: Sequence[str], block: int) -> torch.Tensor:
    """Concatenate documents (EOS after each) and cut fixed blocks, as MiniLLM's PT data."""
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    n = len(stream) // (block + 1)
    if n == 0:
        raise ValueError(f"pretraining text too short for one block of {block + 1} tokens")
    return torch.tensor(stream[: n * (block + 1)], dtype=torch.long).view(n, block + 1)


def lm_batch(blocks: torch.Tensor) -> Batch:
    """Every position predicts the next token (the LM / pretraining loss)."""
    return Batch(blocks[:, :-1].contiguous(), torch.ones_like(blocks[:, :-1]), blocks[:, 1:].contiguous())


def infinite_batches(n_items: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Index lists for batches: seeded reshuffle every epoch, never a partial batch."""
    g = torch.Generator().manual_seed(seed)
    if n_items < 1:
        raise ValueError("no training examples")
    while True:
        perm = torch.randperm(n_items, generator=g).tolist()
        if n_items < batch_size:  # tiny data: repeat within the batch rather than fail
            perm = (perm * (batch_size // n_items + 1))
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            yield perm[i: i + batch_size]
