"""The tanh-approximate GELU as one fused kernel.

GPT-2 (and GPT-J, GPT-Neo, CodeGen, ...) name their activation `gelu_new`, which transformers runs as
`NewGELUActivation`: seven elementwise ops over [tokens, 4 x width] in Python, each a pass over memory
and, in training, a saved tensor. `torch.nn.functional.gelu(x, approximate="tanh")` is the same formula
in one kernel (transformers' own `GELUTanh`, documented there as equivalent up to rounding). On the
bench_vs_trl teacher (128 wide, 4 layers, 16 x 40 tokens, 1 thread) a no-grad forward through
transformers is 1.23x [1.18, 1.29] as fast with it (benchmarks/bench_lean.py, 2026-12-02). Values differ from the unfused form by float rounding only (~1e-7 relative,
tests/engine/test_lean.py).
"""
from __future__ import annotations

import torch


def _slow_gelus() -> tuple[type, ...]:
    try:
        from transformers.activations import FastGELUActivation, NewGELUActivation
    except ImportError:  # pragma: no cover - every supported transformers has both
        return ()
    return NewGELUActivation, FastGELUActivation  # both are x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))


class FusedTanhGELU(torch.nn.Module):
    """GELU, tanh approximation, one kernel (forward and backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x, approximate="tanh")


def fuse_activations(model: torch.nn.Module) -> torch.nn.Module:
    """`model`, with every unfused tanh-GELU module replaced in place by FusedTanhGELU. The weights, the
    saved config and every output (to float rounding) are unchanged."""
    slow = _slow_gelus()
    targets = [(name, child) for name, child in model.named_modules() if type(child) in slow]
    for name, _ in targets:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, FusedTanhGELU())
    return model
