"""Teacher top-k cache: the teacher's next-token distributions on fixed training sequences, computed once.

Off-policy methods read the teacher on fixed responses (gold, or the cached teacher samples) and
ask it the same question every epoch and every training seed. The cache stores, per response
position, the k most likely tokens' log-probs (float16) and ids (int32) plus the log of the
remaining mass (float32), so a position costs k*6+4 bytes instead of V*4 (k=64, V=49152: 388 B vs
197 kB). Entries are keyed by a fingerprint of the row's tokens and labels (`row_fingerprints`):
the teacher's distribution is a function of exactly those, so a hit can never be another sequence.

Reconstruction (`topk_expand`) spreads the remaining mass r uniformly over the V-k other tokens, a
normalised distribution p_hat. Its error against the full teacher distribution p, per position:
  KL(p || p_hat) = sum_{tail} p_i log(p_i (V-k) / r)  <=  r log(V-k),
so it vanishes as r -> 0 and is 0 at k = V up to the float16 rounding of the stored log-probs
(relative 2^-11; float32 storage makes k = V exact). For forward KL the student's loss changes by
E_p_hat[-log q] - E_p[-log q] (at most r x the spread of -log q over the tail) and its gradient
wrt the student's logits by p - p_hat (L1 norm <= 2r). `topk_error` measures all of these;
benchmarks/bench_topk_error.py measures them on SmolLM2 (results: benchmarks/results/topk_error.md).

Tensors are kept on CPU; `lookup` gives a batch's entries as `TopKLogits`, which expand to [rows, V]
only a chunk of rows at a time inside the chunked losses (kdbench/chunked.py).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from .chunked import LazyLogits
from .data import Batch
from .io import atomic_torch_save

STORE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def topk_compress(logits: torch.Tensor, k: int, dtype: torch.dtype = torch.float16
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, V] logits -> (top-k log-probs [N,k] in `dtype`, ids int32 [N,k], log tail mass fp32 [N])."""
    logp = torch.log_softmax(logits.float(), -1)
    k = min(k, logp.shape[-1])
    vals, idx = logp.topk(k, dim=-1)
    # log(1 - sum p_topk), computed stably; clamp keeps log finite when the top-k hold all the mass
    tail = torch.log1p(-vals.exp().sum(-1).clamp(max=1 - 1e-7))
    if k == logp.shape[-1]:
        tail = torch.full_like(tail, float("-inf"))
    return vals.to(dtype), idx.int(), tail


def topk_expand(vals: torch.Tensor, idx: torch.Tensor, tail: torch.Tensor, vocab: int) -> torch.Tensor:
    """The reconstructed full log-distribution [N, V]: top-k as stored, the tail mass spread evenly.
    Renormalised, since the fp16 log-probs lose a little mass."""
    n, k = vals.shape
    other = tail.float() - math.log(max(vocab - k, 1))
    out = (other[:, None].expand(n, vocab).clone() if vocab > k
           else torch.full((n, vocab), float("-inf"), device=vals.device))
    out.scatter_(1, idx.long(), vals.float())
    return torch.log_softmax(out, -1)


def topk_error(logits: torch.Tensor, mask: torch.Tensor, k: int, student_logits: torch.Tensor | None = None,
               dtype: torch.dtype = torch.float16) -> dict:
    """What the cache loses at this k over masked-in positions: KL(p || p_hat) and the tail mass; with
    student logits also the forward-KL loss change |KL(p_hat||q) - KL(p||q)| (token mean, and relative)
    and the relative L2 error of its gradient wrt the student logits (the gradient is q - p per row).
    `dtype`: the stored log-probs' (float16 as the cache keeps them; float32 isolates the top-k cut)."""
    keep = mask.reshape(-1) > 0
    flat = logits.reshape(-1, logits.shape[-1])[keep].float()
    p_logp = torch.log_softmax(flat, -1)
    v, i, t = topk_compress(flat, k, dtype)
    q_logp = topk_expand(v, i, t, flat.shape[-1])
    kl = (p_logp.exp() * (p_logp - q_logp)).sum(-1)
    out = {"k": k, "kl_mean": float(kl.mean()), "kl_max": float(kl.max()), "tail_mass_mean": float(t.exp().mean()),
           "tail_mass_max": float(t.exp().max())}
    if student_logits is not None:
        s_logq = torch.log_softmax(student_logits.reshape(-1, flat.shape[-1])[keep].float(), -1)
        p, p_hat = p_logp.exp(), q_logp.exp()
        exact = (p * (p_logp - s_logq)).sum(-1).mean()
        approx = (p_hat * (q_logp - s_logq)).sum(-1).mean()
        # d KL(p||q) / d student logits = (q - p) / N per row: the gradient error is (p_hat - p) / N
        g_exact = (s_logq.exp() - p) / flat.shape[0]
        out.update(fkl_exact=float(exact), fkl_abs_err=float((approx - exact).abs()),
                   fkl_rel_err=float((approx - exact).abs() / exact.abs().clamp(min=1e-12)),
                   grad_rel_err=float((p_hat - p).norm() / flat.shape[0] / g_exact.norm().clamp(min=1e-30)))
    return out


def row_fingerprints(batch: Batch) -> list[str]:
    """One key per row: a hash of its tokens and labels (attended positions), what the teacher sees."""
    out = []
    ids, att, labels = batch.input_ids.cpu(), batch.attention_mask.cpu() > 0, batch.labels.cpu()
    for r in range(ids.shape[0]):
        h = hashlib.blake2b(digest_size=16)
        h.update(ids[r][att[r]].numpy().tobytes())
        h.update(labels[r][att[r]].numpy().tobytes())
        out.append(h.hexdigest())
    return out


class TopKLogits(LazyLogits):
    """A batch's teacher distribution from the cache: log-probs that act as logits, expanded to the full
    vocabulary a chunk of rows at a time. `pos` [B, L] maps each position to its stored row (-1: none)."""

    def __init__(self, vals, idx, tail, pos, vocab: int, device):
        super().__init__()
        self.vals, self.idx, self.tail, self.pos, self.vocab, self.device = vals, idx, tail, pos, vocab, device

    @property
    def shape_bt(self) -> tuple[int, ...]:
        return tuple(self.pos.shape)

    def rows(self, keep: torch.Tensor) -> "TopKLogits":
        sel = self.pos[keep.cpu()]
        if bool((sel < 0).any()):
            raise ValueError("the loss reads positions the teacher cache does not hold (only response positions "
                             "of fixed sequences are cached)")
        return TopKLogits(self.vals[sel], self.idx[sel], self.tail[sel], torch.arange(len(sel)), self.vocab,
                          self.device)

    def chunk(self, i: int, j: int) -> torch.Tensor:
        rows = self.pos[i:j] if self.pos.dim() == 1 else self.pos.reshape(-1)[i:j]
        return self._expand(rows)

    def _expand(self, rows: torch.Tensor) -> torch.Tensor:
        d = self.device
        return topk_expand(self.vals[rows].to(d), self.idx[rows].to(d), self.tail[rows].to(d), self.vocab)

    def full(self) -> torch.Tensor:
        """[B, L, V]; positions without an entry get zeros (a uniform distribution no loss reads)."""
        out = torch.zeros(*self.pos.shape, self.vocab, device=self.device)
        have = self.pos >= 0
        out[have.to(self.device)] = self._expand(self.pos[have])
        return out


class TopKTeacherCache:
    """Top-k teacher distributions at the response positions of fixed sequences, keyed by row fingerprint."""

    def __init__(self, k: int, vocab: int, dtype: str = "float16"):
        if dtype not in STORE_DTYPES:
            raise ValueError(f"teacher cache dtype '{dtype}' is not one of {', '.join(STORE_DTYPES)}")
        self.k, self.vocab, self.dtype = min(k, vocab), vocab, dtype
        self.index: dict[str, tuple[int, int]] = {}  # fingerprint -> (first stored row, n positions)
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.n_rows = 0

    def __len__(self) -> int:
        return len(self.index)

    @torch.no_grad()
    def add(self, batch: Batch, teacher: LazyLogits, chunk: int = 256) -> None:
        """Store the teacher's distributions (LazyLogits of the batch, exact) at its response positions."""
        keep = batch.labels != -100
        rows = teacher.rows(keep.to(batch.labels.device))
        n = int(keep.sum())
        parts = [topk_compress(rows.chunk(i, min(i + chunk, n)), self.k, STORE_DTYPES[self.dtype])
                 for i in range(0, n, chunk)]
        if not parts:
            return
        v, i, t = (torch.cat([p[m] for p in parts]).cpu() for m in range(3))
        counts = keep.sum(1).tolist()
        start = self.n_rows
        for fp, c in zip(row_fingerprints(batch), counts):
            self.index[fp] = (start, int(c))
            start += int(c)
        self._parts.append((v, i, t))
        self.n_rows = start
        self._packed = None

    def _tensors(self):
        if self._packed is None:
            if not self._parts:
                self._packed = (torch.zeros(0, self.k, dtype=STORE_DTYPES[self.dtype]),
                                torch.zeros(0, self.k, dtype=torch.int32), torch.zeros(0))
            else:
                self._packed = tuple(torch.cat([p[m] for p in self._parts]) for m in range(3))
                self._parts = [self._packed]
        return self._packed

    def merge(self, other: "TopKTeacherCache") -> None:
        """Take in another cache's entries (another example set's stage, same k and vocabulary)."""
        if (other.k, other.vocab, other.dtype) != (self.k, self.vocab, self.dtype):
            raise ValueError(f"cannot merge teacher caches of k/vocab/dtype {(other.k, other.vocab, other.dtype)} "
                             f"into {(self.k, self.vocab, self.dtype)}")
        base = self.n_rows
        for fp, (s, c) in other.index.items():
            self.index.setdefault(fp, (base + s, c))
        self._parts.append(other._tensors())
        self.n_rows += other.n_rows
        self._packed = None

    def lookup(self, batch: Batch, device) -> TopKLogits | None:
        """The batch's cached teacher distributions, or None when a row is not cached (or its response
        length differs from the stored one)."""
        keep = (batch.labels != -100).cpu()
        pos = torch.full(keep.shape, -1, dtype=torch.long)
        for r, fp in enumerate(row_fingerprints(batch)):
            hit = self.index.get(fp)
            if hit is None or hit[1] != int(keep[r].sum()):
                return None
            pos[r][keep[r]] = torch.arange(hit[0], hit[0] + hit[1])
        v, i, t = self._tensors()
        return TopKLogits(v, i, t, pos, self.vocab, device)

    def save(self, path: Path) -> None:
        v, i, t = self._tensors()
        atomic_torch_save({"k": self.k, "vocab": self.vocab, "dtype": self.dtype, "index": self.index,
                           "vals": v, "ids": i, "tail": t}, Path(path))

    @classmethod
    def load(cls, path: Path) -> "TopKTeacherCache":
        d = torch.load(path, map_location="cpu", weights_only=False)
        c = cls(d["k"], d["vocab"], d.get("dtype", "float16"))
        c.index, c._packed, c.n_rows = d["index"], (d["vals"], d["ids"], d["tail"]), int(d["vals"].shape[0])
        c._parts = [c._packed]
        return c
