"""Pure functions for MiniLLM's policy-gradient update: rewards, long-range advantages, whitening,
and the PPO clipped surrogate.

All take right-padded [B,T] tensors and a mask (1 = response token that is trained, 0 = padding);
rows may end early (EOS). Padding never enters a sum, a count, a mean or a variance, and outputs
are 0 there. Values at padded positions may be garbage (inf/NaN): they are dropped with
``torch.where``, not multiplied by 0. Callers pass detached sampling-time log-probs for rewards;
these functions do not detach for them.
"""
from __future__ import annotations

import torch

from .divergences import masked_mean


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError("shape mismatch: " + ", ".join(f"{k}={v}" for k, v in shapes.items()))


def _valid(mask: torch.Tensor) -> torch.Tensor:
    return mask > 0


def sequence_rewards(teacher_logp: torch.Tensor, student_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards r_t = log p(y_t | y_<t, x) - log q(y_t | y_<t, x), zero at padding.

    Inputs are the log-probs of the sampled tokens under teacher and student, [B,T].
    """
    _check_same_shape(teacher_logp=teacher_logp, student_logp=student_logp, mask=mask)
    r = teacher_logp.float() - student_logp.float()
    return torch.where(_valid(mask), r, torch.zeros_like(r))


ADVANTAGE_MODES = ("paper", "lmops")


def long_range_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 0.95, length_norm: bool = True,
    mode: str = "paper",
) -> torch.Tensor:
    """MiniLLM's long-range advantage.

    ``mode="paper"`` (default): A_t = (1/N_t) * sum_{t' > t} gamma^(t'-t-1) * r_t', the paper's
    R_{t+1} (Eq. 5-6: the future *after* token t; r_t itself is handled exactly by the single-step
    term). N_t is the number of valid (mask = 1) positions after t; A_t = 0 where none follow.

    ``mode="lmops"``: A_t = (1/N'_t) * sum_{t' >= t} gamma^(t'-t) * r_t', N'_t counting t itself:
    what LMOps ``minillm/losses.py`` ``_get_advantages_and_returns`` and TRL's MiniLLM trainer
    compute. With no padding, lmops' A_t equals paper's A_{t-1} (one position later).

    Without ``length_norm`` there is no division. Padded positions are 0. Discounting is relative to
    t, never by absolute position, so each row is independent of the others' lengths.
    """
    _check_same_shape(rewards=rewards, mask=mask)
    if not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"advantage mode must be one of {', '.join(ADVANTAGE_MODES)}, got {mode!r}")
    valid = _valid(mask)
    r = torch.where(valid, rewards.float(), torch.zeros_like(rewards, dtype=torch.float32))
    v = valid.float()
    T = r.shape[-1]
    disc = torch.zeros_like(r)  # G_t = sum_{t'>t} gamma^(t'-t-1) r_t'
    count = torch.zeros_like(r)  # N_t = number of valid t' > t
    g_next = torch.zeros_like(r[..., 0])
    n_next = torch.zeros_like(r[..., 0])
    # reverse scan: G_t = r_{t+1} + gamma * G_{t+1}; padded r_{t+1} is 0 and adds 0 to the count
    for t in range(T - 2, -1, -1):
        g_next = r[..., t + 1] + gamma * g_next
        n_next = v[..., t + 1] + n_next
        disc[..., t] = g_next
        count[..., t] = n_next
    if mode == "lmops":  # include t itself: sum_{t'>=t} gamma^(t'-t) r_t' = r_t + gamma * G_t
        disc = r + gamma * disc
        count = v + count
    if length_norm:
        has_future = count > 0
        safe_count = torch.where(has_future, count, torch.ones_like(count))
        disc = torch.where(has_future, disc / safe_count, torch.zeros_like(disc))
    return torch.where(valid, disc, torch.zeros_like(disc))


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / sqrt(var + eps) with mean and variance over valid positions only.

    The variance is the population variance (divide by the count), which stays defined for a
    single valid token. LMOps' ``whiten`` uses ``torch.var``, the unbiased sample variance (divide
    by count - 1): our output is theirs times sqrt((n - 1) / n), (under 0.1% for a round of
    n > 500 tokens). With ``shift_mean=False`` the mean is added back (scale only). Padding is 0
    in the output. (Upstream MiniLLM whitens over the full padded tensor; we exclude padding so
    that a batch's padding does not change its advantages.)
    """
    _check_same_shape(values=values, mask=mask)
    valid = _valid(mask)
    x = torch.where(valid, values.float(), torch.zeros_like(values, dtype=torch.float32))
    n = valid.sum()
    if n == 0:
        return torch.zeros_like(x)
    mean = x.sum() / n
    centred = torch.where(valid, x - mean, torch.zeros_like(x))
    var = (centred * centred).sum() / n
    out = centred * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(valid, out, torch.zeros_like(out))


def ppo_clipped_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    importance_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """PPO clipped surrogate, averaged over valid tokens of the batch.

    ratio = exp(logp_new - logp_old) * w (w defaults to 1; MiniLLM passes the teacher-mixed
    importance weight q/p~). Per token: max(-A * ratio, -A * clip(ratio, 1-clip, 1+clip)).
    Gradients flow through ``logp_new`` only in practice: pass detached old log-probs, weights and
    advantages.
    """
    _check_same_shape(
        logp_new=logp_new, logp_old=logp_old, advantages=advantages, mask=mask, importance_weights=importance_weights
    )
    if clip < 0:
        raise ValueError(f"clip must be >= 0, got {clip}")
    valid = _valid(mask)
    zero = torch.zeros_like(logp_new, dtype=torch.float32)
    # sanitise padding before exp so that garbage there cannot make inf/NaN (also in backward)
    log_ratio = torch.where(valid, logp_new.float() - logp_old.float(), zero)
    ratio = log_ratio.exp()
    if importance_weights is not None:
        ratio = ratio * torch.where(valid, importance_weights.float(), zero)
    adv = torch.where(valid, advantages.float(), zero)
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip, 1.0 + clip))
    return masked_mean(per_token, mask)
