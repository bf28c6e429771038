"""Teacher top-k cache: the teacher's next-token distributions on a fixed training set, computed once.

Off-policy methods that read the teacher on gold data (word-level KD) ask the teacher the same
question every epoch. The cache stores, per example and response position, the k most likely
tokens' log-probs (float16) and ids (int32) plus the log of the remaining mass (float32), so a
position costs k*6+4 bytes instead of V*4 (k=64, V=50257: 388 B vs 201 kB).

The float16 log-probs carry a relative error <= 2^-11 (0.008 nats on a log-prob of -16).
Reconstruction spreads the remaining mass uniformly over the V-k other tokens (a normalised
distribution p_hat). Error against the full teacher distribution p, per position:
  KL(p || p_hat) = sum_{tail} p_i log(p_i / (r/(V-k))) <= r log(V-k) - H_tail-part,  r = tail mass,
so it vanishes as r -> 0 and is exactly 0 for k = V (tests/engine/test_teacher_cache.py checks both and
that the error falls with k). For KD the student's loss changes by E_p_hat - E_p of -log q, which
is at most r x (max - min of -log q over the tail); with a peaked teacher (a trained toy teacher
puts > 99 % of its mass on a few tokens) r is small. Measure it for your teacher with
`topk_error(logits, mask, k)`.

Keyed by example id; tensors are on CPU. Cost accounting: building counts the teacher forward
tokens once (the cost table shows the saving over a per-step teacher).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from .data import Batch
from .io import atomic_torch_save


def topk_compress(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, V] logits -> (top-k log-probs fp16 [N,k], ids int32 [N,k], log tail mass fp32 [N])."""
    logp = torch.log_softmax(logits.float(), -1)
    k = min(k, logp.shape[-1])
    vals, idx = logp.topk(k, dim=-1)
    # log(1 - sum p_topk), computed stably; clamp keeps log finite when the top-k hold all the mass
    tail = torch.log1p(-vals.exp().sum(-1).clamp(max=1 - 1e-7))
    if k == logp.shape[-1]:
        tail = torch.full_like(tail, float("-inf"))
    return vals.half(), idx.int(), tail


def topk_expand(vals: torch.Tensor, idx: torch.Tensor, tail: torch.Tensor, vocab: int) -> torch.Tensor:
    """The reconstructed full log-distribution [N, V]: top-k as stored, the tail mass spread evenly.
    Renormalised, since the fp16 log-probs lose a little mass."""
    n, k = vals.shape
    other = tail - math.log(max(vocab - k, 1))
    out = other[:, None].expand(n, vocab).clone() if vocab > k else torch.full((n, vocab), float("-inf"))
    out.scatter_(1, idx.long(), vals.float())
    return torch.log_softmax(out, -1)


def topk_error(logits: torch.Tensor, mask: torch.Tensor, k: int) -> dict:
    """KL(p || p_hat) and the tail mass over masked-in positions: what the cache loses at this k."""
    flat = logits.reshape(-1, logits.shape[-1])[mask.reshape(-1) > 0].float()
    p_logp = torch.log_softmax(flat, -1)
    v, i, t = topk_compress(flat, k)
    q_logp = topk_expand(v, i, t, flat.shape[-1])
    kl = (p_logp.exp() * (p_logp - q_logp)).sum(-1)
    return {"k": k, "kl_mean": float(kl.mean()), "kl_max": float(kl.max()), "tail_mass_mean": float(t.exp().mean())}


class TopKTeacherCache:
    """Per-example top-k teacher distributions for the response positions of gold batches."""

    def __init__(self, k: int, vocab: int):
        self.k, self.vocab = k, vocab
        self.entries: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def build(self, ctx, examples: Sequence, batch_size: int = 64) -> None:
        """One teacher pass over the examples not cached yet (ctx: MethodContext, counts tokens)."""
        todo = [ex for ex in examples if ex.id not in self.entries]
        for s in range(0, len(todo), batch_size):
            exs = todo[s: s + batch_size]
            b = ctx.encode(exs)
            t = ctx.teacher_logits(b).cpu()
            mask = b.labels != -100
            for r, ex in enumerate(exs):
                self.entries[ex.id] = topk_compress(t[r][mask[r]], self.k)

    def teacher_logp(self, batch: Batch, example_ids: Sequence[str]) -> torch.Tensor:
        """[B, L, V] teacher log-probs aligned with batch.labels (uniform at positions without loss)."""
        B, L = batch.labels.shape
        out = torch.zeros(B, L, self.vocab)
        mask = batch.labels.cpu() != -100
        for r, eid in enumerate(example_ids):
            v, i, t = self.entries[eid]
            out[r][mask[r]] = topk_expand(v, i, t, self.vocab)
        return out

    def save(self, path: Path) -> None:
        atomic_torch_save({"k": self.k, "vocab": self.vocab, "entries": self.entries}, Path(path))

    @classmethod
    def load(cls, path: Path) -> "TopKTeacherCache":
        d = torch.load(path, map_location="cpu", weights_only=False)
        c = cls(d["k"], d["vocab"])
        c.entries = d["entries"]
        return c
