"""Token-level divergences between a student and a teacher next-token distribution.

Every public loss has the signature ``f(student_logits [B,T,V], teacher_logits [B,T,V], mask [B,T],
...) -> scalar`` with p = softmax(teacher) and q = softmax(student). The per-position value is
averaged over the masked-in positions of the whole batch (one token, one vote), so a row with three
response tokens weighs three times a row with one.

- fp32: inputs are cast with ``.float()`` first. Softmax, logsumexp and the p*log(p/q) products lose
  too much in fp16/bf16 (small probabilities underflow, KL of near-equal distributions rounds to
  noise), and a benchmark must not let its numbers depend on the model's storage dtype.
- masking: prompt and padding positions carry no loss. Masked positions are excluded with
  ``torch.where`` rather than multiplied by zero, so inf/NaN garbage there cannot leak into the
  result; an all-zero mask gives 0 (with a graph), not NaN.
- -inf logits (banned tokens, top-k/top-p masks): log-probs come from ``log_softmax`` and every
  product is guarded with ``torch.where`` (never an eps that would shift the value). A term whose
  weight is 0 is 0 (0*log 0 = 0). A term the divergence would make +inf, i.e. weight > 0 where the
  other distribution is exactly 0, is left out of the sum; this keeps losses and gradients finite
  when only one model bans a token. This is not what MiniLLM and DistiLLM do: their ``inf_mask``
  zeroes entries by where the logits are infinite, which does not cover every such term, and the
  audit of issue 15 found inputs on which DistiLLM's losses give NaN where kdbench stays finite
  (deliberately: a NaN would end the run). The value is then a sum over the shared support only
  (not a true divergence; it can be negative).
  When both models share their -inf entries (MiniLLM re-applies one mask to both), nothing is
  dropped and the value is exact.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .registry import Registry

NEG_INF = float("-inf")


# --------------------------------------------------------------------------- helpers


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [B,T] over positions with mask > 0, weighted by the mask.

    ``sum(values * mask) / sum(mask)`` over the whole batch. Masked-out positions are dropped with
    ``torch.where`` so inf/NaN there cannot poison the sum. An empty mask returns a zero that is
    still connected to ``values`` (so ``backward()`` works on an all-prompt batch).
    """
    if values.shape != mask.shape:
        raise ValueError(f"masked_mean: values shape {tuple(values.shape)} != mask shape {tuple(mask.shape)}")
    m = mask.to(values.dtype) if values.is_floating_point() else mask.float()
    keep = mask > 0
    total = torch.where(keep, values * m, torch.zeros_like(values)).sum()
    denom = m.sum()
    # denominator 1 for an empty mask: total is an exact 0 there, and keeps the graph
    return total / torch.where(denom > 0, denom, torch.ones_like(denom))


def _check(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ in shape; student and teacher must share the tokenizer/vocabulary and the batch"
        )
    if student_logits.dim() < 1:
        raise ValueError("logits must have a vocabulary dimension last, e.g. [B, T, V]")
    if mask is not None and tuple(mask.shape) != tuple(student_logits.shape[:-1]):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the logits shape without the vocabulary "
            f"dimension, {tuple(student_logits.shape[:-1])}"
        )


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q, log p) in fp32."""
    return (
        torch.log_softmax(student_logits.float(), dim=-1),
        torch.log_softmax(teacher_logits.float(), dim=-1),
    )


def positive(*log_probs: torch.Tensor) -> bool:
    """No probability is exactly 0: every log-prob > -inf, as after a log-softmax of finite logits (no
    filtered vocabulary). The guarded forms of `_kl_from_log` and `_log_mix` then select every entry, so
    they reduce, value for value and gradient for gradient, to the plain formulas, which skip their masks
    and selects (about 2.5x faster for a JS forward and backward; tests/methods/test_divergences.py checks
    both paths bitwise equal)."""
    return all(bool((x > NEG_INF).all()) for x in log_probs)


def _kl_terms(lw: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    return lw.exp() * (lw - lo)


def _kl_from_log(log_w: torch.Tensor, log_o: torch.Tensor, all_positive: bool = False) -> torch.Tensor:
    """Per-position sum_v w (log w - log o) from log-probs, reduced over the last dimension.

    Entries with w == 0 (log w = -inf) contribute 0; entries with o == 0 and w > 0 (true +inf) are
    dropped (see module docstring). The double ``where`` (sanitise inputs, then select) keeps the
    backward pass free of inf - inf and 0 * inf. `all_positive` (see `positive`): no entry is -inf, and
    the guards are skipped.
    """
    if all_positive:
        return _kl_terms(log_w, log_o).sum(-1)
    ok = (log_w > NEG_INF) & (log_o > NEG_INF)
    zero = torch.zeros_like(log_w)
    lw = torch.where(ok, log_w, zero)
    lo = torch.where(ok, log_o, zero)
    return torch.where(ok, _kl_terms(lw, lo), zero).sum(-1)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float, all_positive: bool = False) -> torch.Tensor:
    """log(weight_a * a + (1 - weight_a) * b), computed in log space.

    The endpoints return an input unchanged (log 0 would otherwise enter the sum). Entries where
    both terms are -inf are sanitised before ``logaddexp`` whose backward would give exp(-inf+inf).
    `all_positive`: no entry of either input is -inf, so none of the mixture's is.
    """
    if weight_a == 0.0:
        return log_b
    if weight_a == 1.0:
        return log_a
    x = log_a + math.log(weight_a)
    y = log_b + math.log1p(-weight_a)
    if all_positive:
        return torch.logaddexp(x, y)
    both = (x == NEG_INF) & (y == NEG_INF)
    zero = torch.zeros_like(x)
    out = torch.logaddexp(torch.where(both, zero, x), torch.where(both, zero, y))
    return torch.where(both, torch.full_like(out, NEG_INF), out)


# --------------------------------------------------------------------------- per-position values


def token_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position, shape [B,T] (unreduced; used by metrics)."""
    _check(student_logits, teacher_logits)
    log_q, log_p = _log_probs(student_logits, teacher_logits)
    return _kl_from_log(log_p, log_q, positive(log_q, log_p))


def token_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(q || p) per position, shape [B,T] (unreduced; used by metrics)."""
    _check(student_logits, teacher_logits)
    log_q, log_p = _log_probs(student_logits, teacher_logits)
    return _kl_from_log(log_q, log_p, positive(log_q, log_p))


def token_js(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """beta*KL(p||m) + (1-beta)*KL(q||m), m = beta*p + (1-beta)*q, per position [B,T]."""
    beta = _check_unit("beta", beta)
    _check(student_logits, teacher_logits)
    log_q, log_p = _log_probs(student_logits, teacher_logits)
    if beta in (0.0, 1.0):  # m equals one of the two and the other term has weight 0
        return _kl_from_log(log_q, log_q)  # an exact 0 that keeps the graph (log_q*0 is NaN at -inf)
    pos = positive(log_q, log_p)
    log_m = _log_mix(log_p, log_q, beta, pos)
    return beta * _kl_from_log(log_p, log_m, pos) + (1.0 - beta) * _kl_from_log(log_q, log_m, pos)


def token_generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """GKD's generalized JSD per position [B,T]; see ``generalized_jsd``."""
    beta = _check_unit("beta", beta)
    if beta == 0.0:
        return token_forward_kl(student_logits, teacher_logits)
    if beta == 1.0:
        return token_reverse_kl(student_logits, teacher_logits)
    return token_js(student_logits, teacher_logits, beta)


def token_tvd(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """0.5 * sum_v |p - q| per position [B,T]."""
    _check(student_logits, teacher_logits)
    log_q, log_p = _log_probs(student_logits, teacher_logits)
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)  # exp(-inf) = 0 exactly, no guard needed


def token_skew_forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1
) -> torch.Tensor:
    """KL(p || alpha*p + (1-alpha)*q) per position [B,T]."""
    alpha = _check_unit("alpha", alpha)
    _check(student_logits, teacher_logits)
    log_q, log_p = _log_probs(student_logits, teacher_logits)
    if alpha == 1.0:  # KL(p || p) = 0 whatever the student: keep a graph so backward does not raise
        return _kl_from_log(log_q, log_q)
    pos = positive(log_q, log_p)
    return _kl_from_log(log_p, _log_mix(log_p, log_q, alpha, pos), pos)


def token_skew_reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1
) -> torch.Tensor:
    """KL(q || alpha*q + (1-alpha)*p) per position [B,T]."""
    alpha = _check_unit("alpha", alpha)
    _check(student_logits, teacher_logits)
    log_q, log_p = _log_probs(student_logits, teacher_logits)
    pos = positive(log_q, log_p)
    return _kl_from_log(log_q, _log_mix(log_q, log_p, alpha, pos), pos)


def _w_phi(log_w: torch.Tensor, x: float, u: torch.Tensor) -> torch.Tensor:
    """w * expm1(x*u)/x (its limit w*u at x = 0), w = exp(log_w). Past |x*u| = 1 it is computed as
    (exp(log_w + x*u) - w)/x, whose exponent is (a+b) log p or (a+b) log q here: no overflow where
    expm1 alone would overflow on a near-zero probability."""
    w = torch.exp(log_w)
    if x == 0.0:
        return w * u
    z = x * u
    small = z.abs() <= 1
    zero = torch.zeros_like(z)
    return torch.where(small, w * torch.expm1(torch.where(small, z, zero)) / x,
                       (torch.exp(log_w + torch.where(small, zero, z)) - w) / x)


def _w_dphi(log_w: torch.Tensor, x: float, u: torch.Tensor) -> torch.Tensor:
    """w * d/dx [expm1(x*u)/x] = w * ((z-1) e^z + 1)/x^2 with z = x*u; for |z| < 0.5, where that
    cancels, w * u^2 * its Taylor series sum_n n/(n+1)! z^(n-1)."""
    w = torch.exp(log_w)
    if x == 0.0:
        return 0.5 * w * u * u
    z = x * u
    small = z.abs() < 0.5
    zs = torch.where(small, z, torch.zeros_like(z))
    zl = torch.where(small, torch.ones_like(z), z)
    series = sum(n / math.factorial(n + 1) * zs ** (n - 1) for n in range(1, 10))
    return torch.where(small, w * u * u * series, ((zl - 1) * torch.exp(log_w + zl) + w) / (x * x))


def token_alpha_beta(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.5,
                     beta: float = 0.5) -> torch.Tensor:
    """The alpha-beta divergence D(p || q) per position [B,T]; see ``alpha_beta``."""
    alpha, beta = float(alpha), float(beta)
    if not (math.isfinite(alpha) and math.isfinite(beta)):
        raise ValueError(f"alpha and beta must be finite, got alpha={alpha}, beta={beta}")
    _check(student_logits, teacher_logits)
    log_q, log_p = _log_probs(student_logits, teacher_logits)
    ok = (log_p > NEG_INF) & (log_q > NEG_INF)  # shared support (module docstring)
    zero = torch.zeros_like(log_p)
    lp, lq = torch.where(ok, log_p, zero), torch.where(ok, log_q, zero)
    u = lp - lq
    s = alpha + beta
    # Each term is p^a q^b [phi(b, u) - phi(-a, u)] / (a + b) with phi(x, u) = expm1(x u)/x and
    # u = log p - log q: a divided difference of phi, whose limits a -> 0, b -> 0 and a + b -> 0 are
    # the continuous limits (Cichocki et al. 2011). Near a + b = 0 the difference cancels, so the
    # midpoint derivative stands in (error O((a+b)^2)).
    log_w = alpha * lp + beta * lq
    if abs(s) > 1e-2:
        val = (_w_phi(log_w, beta, u) - _w_phi(log_w, -alpha, u)) / s
    else:
        val = _w_dphi(log_w, (beta - alpha) / 2, u)
    return torch.where(ok, val, zero).sum(-1)


def token_akl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mu: float = 0.5) -> torch.Tensor:
    """Adaptive KL per position [B,T]; see ``akl``."""
    mu = _check_unit("mu", mu)
    _check(student_logits, teacher_logits)
    log_q, log_p = _log_probs(student_logits, teacher_logits)
    with torch.no_grad():  # the weights carry no gradient (AKL.py get_ratio detaches q)
        p_sorted, order = log_p.exp().sort(dim=-1, descending=True, stable=True)
        gap = (p_sorted - log_q.exp().gather(-1, order)).abs()
        head = p_sorted.cumsum(-1) <= mu  # the token that crosses mu is tail...
        head[..., 0] = True  # ...unless it is the top-1, always head
        g_head = torch.where(head, gap, torch.zeros_like(gap)).sum(-1)
        g_all = gap.sum(-1)
        # q = p gives 0/0: both KLs and their gradients are 0 there, so any weight is exact; take 1/2
        w_head = torch.where(g_all > 0, g_head / torch.where(g_all > 0, g_all, torch.ones_like(g_all)),
                             torch.full_like(g_all, 0.5))
    return w_head * _kl_from_log(log_p, log_q) + (1 - w_head) * _kl_from_log(log_q, log_p)


# --------------------------------------------------------------------------- batch losses


def masked_token_loss(token_fn: Callable[..., torch.Tensor], student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 mask: torch.Tensor, *args) -> torch.Tensor:
    """masked_mean(token_fn(student, teacher), mask), evaluated on the masked-in positions only.

    The helper for a new divergence: write the per-token function of [N, V] logits, then
    `masked_token_loss(my_token_fn, student_logits, teacher_logits, mask, *args)` is its batch loss,
    normalised by the number of response tokens like every other loss here.

    The same value (masked_mean ignores the other positions), but the vocabulary-sized temporaries
    (log-softmaxes, mixtures, products) exist only for response tokens: on a real task the prompt and
    padding are often half the batch, and at V = 50k those temporaries dominate a KD step.
    """
    _check(student_logits, teacher_logits, mask)
    keep = mask > 0
    return masked_mean(token_fn(student_logits[keep], teacher_logits[keep], *args), mask[keep])


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Forward KL, sum_v p (log p - log q): mode-covering (word-level KD up to the teacher entropy)."""
    return masked_token_loss(token_forward_kl, student_logits, teacher_logits, mask)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse KL, sum_v q (log q - log p): mode-seeking (MiniLLM's single-step term)."""
    return masked_token_loss(token_reverse_kl, student_logits, teacher_logits, mask)


def js(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """Skewed Jensen-Shannon: beta*KL(p||m) + (1-beta)*KL(q||m) with m = beta*p + (1-beta)*q.

    beta = 0.5 is the symmetric JS divergence, bounded by ln 2. At beta = 0 or 1 it is identically 0.
    DistiLLM's ``jsd`` with lambda = 0.9 (its GKD baseline) is ``js(beta=0.1)``.
    """
    return masked_token_loss(token_js, student_logits, teacher_logits, mask, beta)


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """Generalized JSD in the GKD / TRL ``GKDTrainer`` convention.

    beta = 0: forward KL(p || q). beta = 1: reverse KL(q || p). In between, with the mixture
    M = (1-beta)*q + beta*p, the loss is beta*KL(p||M) + (1-beta)*KL(q||M).

    Relation to ``js``: for 0 < beta < 1 the two are identical; they differ only at the endpoints,
    which GKD special-cases (the mixture formula would give 0 there). The function is therefore
    discontinuous at beta = 0 and 1 (near 0 it is about beta * KL(p||q)).
    """
    return masked_token_loss(token_generalized_jsd, student_logits, teacher_logits, mask, beta)


def tvd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Total variation distance 0.5 * sum_v |p - q|, in [0, 1]."""
    return masked_token_loss(token_tvd, student_logits, teacher_logits, mask)


def skew_forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, alpha: float = 0.1
) -> torch.Tensor:
    """DistiLLM's skew KL (SKL): KL(p || alpha*p + (1-alpha)*q); alpha = 0 is forward KL.

    DistiLLM's ``skewed_forward_kl`` computes the cross-entropy -sum_v p log(alpha p + (1-alpha) q)
    instead, so its logged value is this one plus the teacher's entropy H(p) (same gradient). At
    alpha = 1 the loss is 0 for every student (a zero with a graph; methods refuse alpha = 1)."""
    return masked_token_loss(token_skew_forward_kl, student_logits, teacher_logits, mask, alpha)


def skew_reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, alpha: float = 0.1
) -> torch.Tensor:
    """DistiLLM's skew reverse KL (SRKL): KL(q || alpha*q + (1-alpha)*p); alpha = 0 is reverse KL."""
    return masked_token_loss(token_skew_reverse_kl, student_logits, teacher_logits, mask, alpha)


def alpha_beta(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5,
               beta: float = 0.5) -> torch.Tensor:
    """ABKD's alpha-beta divergence, -1/(ab) sum_v [p^a q^b - a/(a+b) p^(a+b) - b/(a+b) q^(a+b)].

    (1, 0) is forward KL, (0, 1) reverse KL, (0.5, 0.5) 2 sum (sqrt p - sqrt q)^2, (1, 1) half the
    squared L2; a, b or a + b = 0 are the continuous limits (1/a^2 factors, where the official
    losses.py uses 1/a), computed in log space. Entries outside the shared support are left out.
    """
    return masked_token_loss(token_alpha_beta, student_logits, teacher_logits, mask, alpha, beta)


def akl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, mu: float = 0.5) -> torch.Tensor:
    """Adaptive KL (Wu et al. 2025): (g_H FKL + g_T RKL) / (g_H + g_T) per token.

    The head H is the teacher's top-1 plus the tokens whose sorted cumulative mass is <= mu; g_H and
    g_T sum |p - sg(q)| over the head and the tail. Weights are 1/2 where q = p (0/0 otherwise).
    """
    return masked_token_loss(token_akl, student_logits, teacher_logits, mask, mu)


# Every batch divergence by name (methods that take a divergence as a config value look it up here);
# a new divergence registers with `DIVERGENCES.add(name, fn)`.
DIVERGENCES: Registry[Callable[..., torch.Tensor]] = Registry("divergence")
for _fn in (forward_kl, reverse_kl, js, generalized_jsd, tvd, skew_forward_kl, skew_reverse_kl, alpha_beta,
            akl):
    DIVERGENCES.add(_fn.__name__, _fn, (_fn.__doc__ or "").strip().splitlines()[0])


def get_divergence(name: str) -> Callable[..., torch.Tensor]:
    """Look up a divergence by name; unknown names list the valid ones (with a did-you-mean)."""
    return DIVERGENCES.get(name)
