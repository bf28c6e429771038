"""Cheap looks at a model's weights, taken on every sampled batch and every no-grad forward (the lean paths'
checks in kdbench/lean, the trimmed forwards' in kdbench/hidden)."""
from __future__ import annotations

import torch


def weights(model) -> list[torch.Tensor]:
    """model's parameters (a weight tied in two places listed twice): a plain walk over the modules, a
    fraction of `model.parameters()`'s cost, which these per-batch checks would otherwise pay several times."""
    return [p for m in model.modules() for p in m._parameters.values() if p is not None]


def has_sharded_weights(model, params: list[torch.Tensor] | None = None) -> bool:
    """Weights partitioned across ranks: FSDP2's DTensors, DeepSpeed ZeRO-3's `ds_id` (empty local shards)."""
    return any(type(p).__name__ == "DTensor" or hasattr(p, "ds_id") for p in (params or weights(model)))
