"""LoRA students through the `peft` library: wrap a student, count what trains, save the adapter.

With `peft.method: lora` every student a method trains (and the SFT student, MiniLLM's init) is
wrapped before training: the base weights are frozen and only the adapter's A/B matrices get
gradients (the trainer's optimizer and DDP gradient sum take only `requires_grad` parameters).
Methods see the wrapped model as their student, so on-policy sampling runs with the adapter active.

A trained cell keeps the adapter in `adapter/` (with its tokenizer) and, with `peft.save_merged`,
full merged weights in `model/`; evaluation loads whichever the cell recorded
(kdbench.models.load_model merges an adapter folder onto its base on load). The adapter's config
names its base by absolute path, so an adapter-only run folder depends on its stage cache.
Training checkpoints (resume) keep only the trainable weights (`checkpoint_state`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .config import PeftConfig
from .errors import ConfigError, KdbenchError


def wrap(model, cfg: PeftConfig, seed: int):
    """`model` with a fresh LoRA adapter; the adapter's random init is seeded (reproducible cells)."""
    from peft import LoraConfig, get_peft_model

    targets = None if cfg.target_modules == ["auto"] else list(cfg.target_modules)
    family = getattr(model.config, "model_type", "")
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      task_type="CAUSAL_LM", fan_in_fan_out=family == "gpt2")  # GPT-2's Conv1D stores W transposed
    torch.manual_seed(seed)
    try:
        return get_peft_model(model, lora)
    except ValueError as e:  # peft knows no default targets for this family, or none matched
        raise ConfigError(f"config key 'peft.target_modules': {e} (model type '{family}'; name its linear layers, "
                          "e.g. --set peft.target_modules=[q_proj,v_proj])") from None


def parameter_counts(model) -> dict[str, int]:
    """Trainable and total parameters (the cost table's columns)."""
    params = list(model.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad),
            "total": sum(p.numel() for p in params)}


def save(model, tokenizer, folder: Path, base_path: str, merged: bool) -> Path:
    """Save the trained adapter to folder/adapter (and merged weights to folder/model when asked);
    returns the folder evaluation loads."""
    from .models import save_model

    peft_cfg = model.peft_config["default"]
    peft_cfg.base_model_name_or_path = str(Path(base_path).resolve()) if Path(base_path).exists() else base_path
    save_model(model, tokenizer, folder / "adapter")
    if not merged:
        return folder / "adapter"
    save_model(model.merge_and_unload(), tokenizer, folder / "model")
    return folder / "model"


def checkpoint_state(model) -> dict:
    """What a training checkpoint keeps of `model`: everything, or for an adapter model only the
    trainable weights. Frozen base weights come back unchanged from the cell's init on resume, and a
    7B base would otherwise cost ~28 GB per checkpoint."""
    if not hasattr(model, "peft_config"):
        return model.state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in trainable}


def load_checkpoint_state(model, state: dict) -> None:
    """Inverse of checkpoint_state; an adapter checkpoint must cover exactly the trainable weights."""
    if not hasattr(model, "peft_config"):
        model.load_state_dict(state)
        return
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != trainable:
        raise KdbenchError(f"checkpoint does not match this adapter: {len(set(state) - trainable)} unexpected and "
                           f"{len(trainable - set(state))} missing weights; delete the checkpoint to restart")
    model.load_state_dict(state, strict=False)
