"""Logit-level losses computed from final hidden states, a chunk of tokens at a time.

At a real vocabulary (32k-256k) the [N, V] logits of student and teacher, their log-softmaxes and
the divergence's temporaries dominate a KD step's memory. Here a model's output is kept as
`LazyLogits` (final hidden states + the lm_head), and a loss takes only the masked-in rows, then for
each chunk of `chunk` rows (sized by `rows_per_chunk` to an element budget, so that a chunk's memory
does not grow with V): lm_head, loss, and (when a gradient is needed) that chunk's gradient
with respect to the hidden rows and the head's weight, before the next chunk. So no more than
[chunk, V] logits exist at once, and nothing vocabulary-sized is saved for backward (the idea of
Liger-Kernel's fused linear JSD and torchtune's chunked output loss, in plain torch).

Values and gradients equal the unchunked losses of kdbench.divergences (one token, one vote:
sum of mask-weighted per-token values over the batch's response tokens / their count) up to float
summation order; tests/engine/test_chunked.py checks <= 1e-6 relative for every divergence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import divergences as D


@dataclass
class LazyLogits:
    """A model's logits, not yet computed: ``hidden [B, L, H] @ weight[:V].T + bias`` (or, for a
    source that has no head, e.g. the teacher's top-k cache, the dense ``logits [B, L, V]``)."""

    hidden: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    vocab_size: int | None = None  # real vocabulary: padded embedding rows are cut off
    logits: torch.Tensor | None = None

    @classmethod
    def dense(cls, logits: torch.Tensor) -> "LazyLogits":
        return cls(logits=logits)

    @property
    def shape_bt(self) -> tuple[int, ...]:
        src = self.logits if self.logits is not None else self.hidden
        return tuple(src.shape[:-1])

    def rows(self, keep: torch.Tensor) -> "LazyLogits":
        """Only the positions where ``keep`` [B, L] is True, flattened to [N, ...]."""
        if self.logits is not None:
            return LazyLogits(logits=self.logits[keep])
        return LazyLogits(self.hidden[keep], self.weight, self.bias, self.vocab_size)

    def head(self, h: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None):
        w = self.weight if weight is None else weight
        b = self.bias if bias is None else bias
        # cut only what is padding: a slice, even of every row, makes autograd write its gradient into a
        # zero-filled tensor of the whole weight (113 MB per chunk at SmolLM2's vocabulary)
        if self.vocab_size is not None and self.vocab_size < w.shape[0]:
            w = w[: self.vocab_size]
            b = b[: self.vocab_size] if b is not None else None
        return F.linear(h, w, b)

    def chunk(self, i: int, j: int) -> torch.Tensor:
        """Logits of rows i:j (of an already row-selected LazyLogits)."""
        if self.logits is not None:
            return self.logits[i:j]
        return self.head(self.hidden[i:j])

    def full(self) -> torch.Tensor:
        """Every position's logits [B, L, V]: the unchunked path."""
        return self.logits if self.logits is not None else self.head(self.hidden)


# the per-token function behind every batch divergence (each is masked_token_loss(token_fn, ...))
TOKEN_FNS: dict[Callable, Callable] = {
    D.forward_kl: D.token_forward_kl, D.reverse_kl: D.token_reverse_kl, D.js: D.token_js,
    D.generalized_jsd: D.token_generalized_jsd, D.tvd: D.token_tvd, D.skew_forward_kl: D.token_skew_forward_kl,
    D.skew_reverse_kl: D.token_skew_reverse_kl, D.alpha_beta: D.token_alpha_beta, D.akl: D.token_akl,
}


def token_fn_of(divergence: Callable) -> Callable:
    """The per-token function of a batch divergence (a token function is returned unchanged)."""
    if divergence in TOKEN_FNS:
        return TOKEN_FNS[divergence]
    name = getattr(divergence, "__name__", "")
    if name.startswith("token_") or getattr(divergence, "is_token_fn", False):
        return divergence
    raise ValueError(f"no per-token function known for divergence {name or divergence!r}; pass its token "
                     f"function (f(student [N,V], teacher [N,V], *args) -> [N]) or register it in "
                     f"kdbench.chunked.TOKEN_FNS")


class _FusedChunks(torch.autograd.Function):
    """sum_c fn_c(hidden rows c) with each chunk's gradient computed in the forward pass and
    freed with its logits; backward only scales the stored [N, H] / [V, H] gradients.

    Per chunk only the loss's gradient with respect to the chunk's logits goes through autograd; the
    lm_head's part is two matmuls written in place (grad_h[rows] = g W, grad_W += g^T h): no [V, H]
    gradient allocated and added per chunk, no slice backward filling a whole-weight zero tensor."""

    @staticmethod
    def forward(actx, hidden, weight, bias, chunk_value, lazy, chunk):
        need = [t is not None and t.requires_grad for t in (hidden, weight, bias)]
        V = weight.shape[0] if lazy.vocab_size is None else min(lazy.vocab_size, weight.shape[0])
        w = weight.detach()[:V]  # padded embedding rows are not tokens: no logits, no gradient
        b = bias.detach()[:V] if bias is not None else None
        # summed in fp32 over the chunks and cast once in backward: bf16 sums would round at every chunk
        grads = [torch.zeros_like(t, dtype=torch.float32) if n else None
                 for t, n in zip((hidden, weight, bias), need)]
        total = hidden.new_zeros((), dtype=torch.float32)
        n = hidden.shape[0]
        for i in range(0, n, chunk):
            j = min(i + chunk, n)
            h = hidden.detach()[i:j]
            logits = lazy.head(h, w, b).requires_grad_(True)
            with torch.enable_grad():
                val = chunk_value(logits, i, j)
                (g,) = torch.autograd.grad(val, logits, allow_unused=True)  # None: a value without the student
            total = total + val.detach()
            if g is None:
                continue
            if need[0]:
                grads[0][i:j] = g @ w
            if need[1]:  # accumulated in place in fp32 (a bf16 product is cast by the in-place add)
                if g.dtype == torch.float32:
                    grads[1][:V].addmm_(g.t(), h)
                else:
                    grads[1][:V] += g.t() @ h
            if need[2]:
                grads[2][:V] += g.sum(0)
        actx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        actx.need = need
        actx.dtypes = [t.dtype if t is not None else None for t in (hidden, weight, bias)]
        return total

    @staticmethod
    def backward(actx, grad_out):
        saved = actx.saved_tensors
        out = [(grad_out * g).to(dt) if flag else None for g, flag, dt in zip(saved, actx.need, actx.dtypes)]
        return out[0], out[1], out[2], None, None, None


def _row_sum(chunk_value: Callable[[torch.Tensor, int, int], torch.Tensor], s: LazyLogits, n: int,
             chunk: int) -> torch.Tensor:
    """sum over chunks of chunk_value(student logits of rows i:j, i, j), a scalar with a graph."""
    grad_on = torch.is_grad_enabled()
    if s.logits is not None:  # a dense student: only the row selection and the chunking apply
        spans = [(i, min(i + chunk, n)) for i in range(0, n, chunk)]
        parts = [chunk_value(s.logits[i:j], i, j) for i, j in spans]
        return torch.stack(parts).sum() if parts else s.logits.sum() * 0
    tracked = grad_on and any(t is not None and t.requires_grad for t in (s.hidden, s.weight, s.bias))
    if not tracked:
        with torch.no_grad():
            total = s.hidden.new_zeros((), dtype=torch.float32)
            for i in range(0, n, chunk):
                total = total + chunk_value(s.chunk(i, min(i + chunk, n)), i, min(i + chunk, n))
        return total
    return _FusedChunks.apply(s.hidden, s.weight, s.bias, chunk_value, s, chunk)


def rows_per_chunk(vocab: int, max_rows: int, budget_elements: int) -> int:
    """Rows per lm_head chunk at vocabulary ``vocab``: as many as fit ``budget_elements`` elements in one
    [rows, vocab] tensor, at most ``max_rows``, at least 1. A chunk's ~8 fp32 temporaries then hold at
    most 8 x budget elements whatever V (TrainConfig.loss_chunk_tokens / loss_chunk_elements)."""
    vocab, max_rows, budget_elements = int(vocab), int(max_rows), int(budget_elements)
    if vocab < 1 or max_rows < 1 or budget_elements < 1:
        raise ValueError(f"rows_per_chunk needs vocab, max_rows and budget_elements >= 1, got {vocab}, {max_rows}, "
                         f"{budget_elements}")
    return max(1, min(max_rows, budget_elements // vocab))


def _check_chunk(chunk: int) -> int:
    chunk = int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk (rows per lm_head chunk) must be >= 1, got {chunk}")
    return chunk


def chunked_token_loss(token_fn: Callable, student: LazyLogits, teacher: LazyLogits, mask: torch.Tensor, *args,
                       temperature: float = 1.0, chunk: int = 1024, **kwargs) -> torch.Tensor:
    """``masked_token_loss(token_fn, s / T, t / T, mask, *args)`` without the [B, L, V] logits.

    The teacher carries no gradient (its logits come from its hidden rows per chunk, or from a dense
    tensor such as the top-k cache's log-probs)."""
    chunk = _check_chunk(chunk)
    if tuple(mask.shape) != student.shape_bt or tuple(mask.shape) != teacher.shape_bt:
        raise ValueError(f"mask {tuple(mask.shape)}, student {student.shape_bt} and teacher {teacher.shape_bt} "
                         "positions must agree")
    keep = mask > 0
    s, t = student.rows(keep), teacher.rows(keep)
    w = mask[keep].float()
    T = float(temperature)

    def value(s_logits, i, j):
        with torch.no_grad():
            t_logits = t.chunk(i, j)
        s_l, t_l = (s_logits, t_logits) if T == 1.0 else (s_logits / T, t_logits / T)
        return (token_fn(s_l, t_l, *args, **kwargs) * w[i:j]).sum()

    total = _row_sum(value, s, int(w.numel()), chunk)
    denom = w.sum()
    return total / torch.where(denom > 0, denom, torch.ones_like(denom))


def chunked_cross_entropy(student: LazyLogits, labels: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Token-mean cross-entropy over labelled positions (labels >= 0), as ``method.cross_entropy``."""
    chunk = _check_chunk(chunk)
    keep = labels >= 0
    s, y = student.rows(keep), labels[keep]

    def value(s_logits, i, j):
        return -torch.log_softmax(s_logits.float(), -1).gather(-1, y[i:j, None]).sum()

    return _row_sum(value, s, int(y.numel()), chunk) / max(int(y.numel()), 1)


def chunked_logprobs(student: LazyLogits, labels: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """log softmax(logits)[label] per position [B, L] (0 where label < 0), as ``gather_logprobs``.

    A per-token output cannot take the fused gradient, so each chunk is recomputed in backward
    (activation checkpointing): one more lm_head matmul, no [N, V] saved."""
    chunk = _check_chunk(chunk)
    keep = labels >= 0
    s, y = student.rows(keep), labels[keep]
    n = int(y.numel())

    def rows(h, w, b, i, j):
        logits = s.head(h, w, b) if s.logits is None else h
        return torch.log_softmax(logits.float(), -1).gather(-1, y[i:j, None]).squeeze(-1)

    parts = []
    for i in range(0, n, chunk):
        j = min(i + chunk, n)
        if s.logits is not None:
            parts.append(rows(s.logits[i:j], None, None, i, j))
        elif torch.is_grad_enabled() and (s.hidden.requires_grad or s.weight.requires_grad):
            parts.append(checkpoint(rows, s.hidden[i:j], s.weight, s.bias, i, j, use_reentrant=False))
        else:
            parts.append(rows(s.hidden[i:j], None, None, i, j))
    src = s.logits if s.logits is not None else s.hidden
    flat = torch.cat(parts) if parts else src.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(labels.shape, dtype=torch.float32, device=flat.device)
    return out.masked_scatter(keep, flat) if n else out + flat.sum() * 0


def chunked_ce_and_token_loss(token_fn: Callable, student: LazyLogits, teacher: LazyLogits, labels: torch.Tensor,
                              mask: torch.Tensor, *args, ce_weight: float, div_weight: float,
                              temperature: float = 1.0, chunk: int = 1024, **kwargs
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ce_weight * CE + div_weight * D, CE, D) with one lm_head pass: CE as `chunked_cross_entropy`
    on `labels`, D as `chunked_token_loss` on `mask`, both from the same chunk of student logits.

    Computed as two separate losses, every chunk's lm_head product and its gradient would be done
    twice; at a 49k vocabulary that product is about a third of a small student's step (the head
    of SmolLM2's pruned student against its 15 layers), which is most of what a cached-teacher KD
    step costs over SFT. The CE and D returned are detached (for logging); the loss carries the graph."""
    chunk = _check_chunk(chunk)
    if tuple(mask.shape) != student.shape_bt or tuple(labels.shape) != student.shape_bt \
            or tuple(mask.shape) != teacher.shape_bt:
        raise ValueError(f"labels {tuple(labels.shape)}, mask {tuple(mask.shape)}, student {student.shape_bt} and "
                         f"teacher {teacher.shape_bt} positions must agree")
    keep = (labels >= 0) | (mask > 0)
    s, t = student.rows(keep), teacher.rows(keep)
    y = labels[keep]
    has_y = y >= 0
    y = torch.where(has_y, y, torch.zeros_like(y))  # rows the divergence needs but CE does not: weight 0
    n_y = max(int(has_y.sum()), 1)
    w = mask[keep].float()
    w_sum = float(w.sum())
    w_d = w / (w_sum if w_sum > 0 else 1.0)
    w_ce = has_y.float() / n_y
    T = float(temperature)
    parts = {"ce": [], "div": []}

    def value(s_logits, i, j):
        with torch.no_grad():
            t_logits = t.chunk(i, j)
        nll = -torch.log_softmax(s_logits.float(), -1).gather(-1, y[i:j, None]).squeeze(-1)
        s_l, t_l = (s_logits, t_logits) if T == 1.0 else (s_logits / T, t_logits / T)
        d = token_fn(s_l, t_l, *args, **kwargs)
        ce_part, d_part = (nll * w_ce[i:j]).sum(), (d * w_d[i:j]).sum()
        parts["ce"].append(ce_part.detach())
        parts["div"].append(d_part.detach())
        return ce_weight * ce_part + div_weight * d_part

    loss = _row_sum(value, s, int(y.numel()), chunk)
    zero = loss.detach().new_zeros(())
    ce = torch.stack(parts["ce"]).sum() if parts["ce"] else zero
    div = torch.stack(parts["div"]).sum() if parts["div"] else zero
    return loss, ce, div
