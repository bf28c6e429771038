"""Models and tokenizers: built-in presets, hub names and local paths through one loading path.

Presets are GPT-2-architecture models (transformers' own classes) built from a config with a
tokenizer kdbench trains offline on the task's text; they are saved with `save_pretrained` and
loaded back with `AutoModelForCausalLM.from_pretrained`, exactly like any hub model or local path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import ModelError
from .registry import Registry

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


@dataclass(frozen=True)
class ModelPreset:
    n_embd: int
    n_layer: int
    n_head: int
    description: str = ""

    def as_dict(self) -> dict:
        return {"n_embd": self.n_embd, "n_layer": self.n_layer, "n_head": self.n_head}


MODEL_PRESETS: Registry[ModelPreset] = Registry("model preset")
for _name, _p in {
    "gpt2-toy-xs": ModelPreset(32, 1, 2, "GPT-2 architecture, 32 wide, 1 layer (~15k body params)"),
    "gpt2-toy-s": ModelPreset(64, 2, 2, "GPT-2 architecture, 64 wide, 2 layers (~0.1M body params)"),
    "gpt2-toy-m": ModelPreset(128, 4, 4, "GPT-2 architecture, 128 wide, 4 layers (~0.8M body params)"),
    "gpt2-toy-l": ModelPreset(256, 4, 4, "GPT-2 architecture, 256 wide, 4 layers (~3.2M body params)"),
}.items():
    MODEL_PRESETS.add(_name, _p, _p.description)


def is_preset(name: str) -> bool:
    return name in MODEL_PRESETS


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and Path(name).expanduser().exists()


def check_model_name(name: str, where: str) -> None:
    """Fail early for a name that is neither a preset, an existing path, nor plausibly a hub id."""
    if is_preset(name):
        return
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(f"{where}: '{name}' exists but has no config.json; expected a folder written by "
                             "save_pretrained (config.json, model weights, tokenizer files)")
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"{where}: model path '{name}' does not exist. Valid: a built-in preset "
                         f"({', '.join(MODEL_PRESETS.names())}), a local folder from save_pretrained, or a hub id")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        # Offline: a hub id only works if it is already in the local HF cache.
        try:
            from huggingface_hub import try_to_load_from_cache

            if try_to_load_from_cache(name, "config.json") is None:
                raise ModelError(f"{where}: '{name}' is not a preset, not a local folder, and not in the local "
                                 f"Hugging Face cache (offline mode). Presets: {', '.join(MODEL_PRESETS.names())}")
        except ImportError:
            pass


# ------------------------------------------------------------------------------------------------
# tokenizers


def build_word_tokenizer(words: Iterable[str]):
    """A word-level tokenizer over a closed vocabulary (the toy world's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE trained offline on the task's own text (for real-text tasks)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS)


def build_preset_model(preset: str, tokenizer, n_positions: int, seed: int):
    """A freshly initialised GPT-2 model of a preset size for `tokenizer` (dropout off: see
    cpu-notes; GPT-2 init std 0.02 avoids saturated logits and denormal slowdowns)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    p = MODEL_PRESETS.get(preset, "--teacher/--student")
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=p.n_embd, n_layer=p.n_layer,
                     n_head=p.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg)


# ------------------------------------------------------------------------------------------------
# loading


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ModelError(f"could not load a tokenizer from '{path}': {e}") from e
    if tok.pad_token_id is None:
        # Families without a pad token (GPT-2, Llama) pad with EOS, as MiniLLM does.
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_model(path: str, dtype: str = "float32", device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"could not load a causal LM from '{path}': {e}") from e
    return model.to(device)


def save_model(model, tokenizer, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def real_vocab(tokenizer) -> dict[str, int]:
    return tokenizer.get_vocab()


def check_same_vocab(teacher_tok, student_tok, where: str = "--teacher/--student") -> None:
    """Teacher and student must share a vocabulary: compare the real token->id maps (embedding
    matrices may be padded to different sizes; that is fine)."""
    tv, sv = real_vocab(teacher_tok), real_vocab(student_tok)
    if tv != sv:
        only_t = sorted(set(tv) - set(sv))[:5]
        only_s = sorted(set(sv) - set(tv))[:5]
        diff_ids = [k for k in set(tv) & set(sv) if tv[k] != sv[k]][:5]
        raise ModelError(
            f"{where}: teacher and student tokenizers differ (teacher vocab {len(tv)}, student {len(sv)}; "
            f"only in teacher: {only_t}; only in student: {only_s}; different ids: {diff_ids}). Token-level KD "
            "needs one shared vocabulary: pick models of the same family/tokenizer.")


def vocab_size_of(tokenizer) -> int:
    return len(tokenizer.get_vocab())


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
