"""Tiny models and shared paths for the tests (not a test module; tests/conftest.py puts tests/ on sys.path).

    from fixtures import build_random_model, tiny_gpt2, SHARED_DATA

These builders are test-only: the package builds its real models from presets (kdbench.models).
"""
from __future__ import annotations

import os
from pathlib import Path

from kdbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]  # the repository root
# the real data files (MiniLLM's formats), next to the repository unless KDBENCH_SHARED_DATA names them
SHARED_DATA = Path(os.environ.get("KDBENCH_SHARED_DATA") or ROOT.parent / "shared" / "data")

RANDOM_FAMILIES = ("gpt2", "opt", "llama", "qwen2")


def build_random_model(family: str, tokenizer, *, hidden: int = 32, layers: int = 2, heads: int = 2,
                       n_positions: int = 256, vocab_rows: int | None = None, init_std: float = 0.02,
                       seed: int = 0):
    """A randomly initialised causal LM of a real family (tests of the real-model path).

    `vocab_rows` pads the embedding beyond the tokenizer (as OPT/Qwen checkpoints do); it defaults
    to the tokenizer's size. Dropout is off, special-token ids come from the tokenizer.
    """
    import torch
    import transformers as tf

    if family not in RANDOM_FAMILIES:
        raise ConfigError(f"unknown model family '{family}'; valid: {', '.join(RANDOM_FAMILIES)}")
    rows = vocab_rows or len(tokenizer)
    ids = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=rows, n_positions=n_positions, n_embd=hidden, n_layer=layers, n_head=heads,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=init_std, **ids)
        cls = tf.GPT2LMHeadModel
    elif family == "opt":
        cfg = tf.OPTConfig(vocab_size=rows, max_position_embeddings=n_positions, hidden_size=hidden,
                           word_embed_proj_dim=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           ffn_dim=4 * hidden, dropout=0.0, attention_dropout=0.0, init_std=init_std, **ids)
        cls = tf.OPTForCausalLM
    else:
        cfg_cls, cls = ((tf.LlamaConfig, tf.LlamaForCausalLM) if family == "llama"
                        else (tf.Qwen2Config, tf.Qwen2ForCausalLM))
        # one KV head: exercises grouped-query attention, as in real Llama/Qwen2 checkpoints
        cfg = cfg_cls(vocab_size=rows, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=n_positions,
                      initializer_range=init_std, **ids)
    torch.manual_seed(seed)
    return cls(cfg)


def tiny_gpt2(seed: int = 0):
    """A 1-layer, 16-wide GPT-2 over a 24-token vocabulary (pad 0, eos 1): the trainer and DDP tests' model."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=24, n_positions=32, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0, embd_pdrop=0,
                     attn_pdrop=0, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    return GPT2LMHeadModel(cfg)


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] over every TensorBoard event file under `logdir` (one per writer session)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out
