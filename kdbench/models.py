"""Models and tokenizers: built-in presets, hub names and local paths through one loading path.

Presets are GPT-2-architecture models (transformers' own classes) built from a config with a
tokenizer kdbench trains offline on the task's text; they are saved with `save_pretrained` and
loaded back with `AutoModelForCausalLM.from_pretrained`, exactly like any hub model or local path.

Real models (hub names or local folders, any causal LM family) follow these rules:

* One vocabulary: the teacher's tokenizer is the one everyone uses. Teacher and student tokenizers
  must map the same tokens to the same ids (`check_same_vocab`); embedding matrices may be padded
  to different sizes (OPT: 50272 rows for 50265 tokens, Qwen2.5: 151936 or 152064 for 151665), so
  logits are cut to the real vocabulary (`slice_vocab`) before any loss or divergence.
* Pad/EOS: a tokenizer without a pad token pads with EOS (GPT-2, Llama, as MiniLLM does). Padding
  is never a target (labels -100, attention mask 0), so EOS-as-pad cannot leak into the loss, and
  the one EOS that ends a response is a trained target (kdbench.data.collate).
* dtype: models that are trained keep fp32 master weights; `--dtype` bfloat16/float16 then means
  mixed precision (accelerate, GPU only). Frozen models (the teacher while distilling, models
  being evaluated) are loaded in `--dtype` to save memory, as MiniLLM loads its teacher in fp16.
* Placement: `--device` (auto | cpu | cuda | cuda:N | mps) for the student and evaluation;
  `--teacher-device` same | cpu (offload: the teacher runs on CPU, logits are moved over) |
  cuda:N | mps (a second accelerator). `check_placement` rejects what this machine cannot do.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from . import model_sources
from .errors import ConfigError, ModelError
from .registry import Registry

log = logging.getLogger("kdbench")

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


@dataclass(frozen=True)
class ModelPreset:
    n_embd: int
    n_layer: int
    n_head: int
    description: str = ""

    family: str = "gpt2"  # gpt2 | llama

    def as_dict(self) -> dict:
        d = {"n_embd": self.n_embd, "n_layer": self.n_layer, "n_head": self.n_head}
        if self.family != "gpt2":  # GPT-2 presets keep the stage keys they always had
            d["family"] = self.family
        return d


MODEL_PRESETS: Registry[ModelPreset] = Registry("model preset")
for _name, _p in {
    "gpt2-toy-xs": ModelPreset(32, 1, 2, "GPT-2 architecture, 32 wide, 1 layer (~15k body params)"),
    "gpt2-toy-s": ModelPreset(64, 2, 2, "GPT-2 architecture, 64 wide, 2 layers (~0.1M body params)"),
    "gpt2-toy-m": ModelPreset(128, 4, 4, "GPT-2 architecture, 128 wide, 4 layers (~0.8M body params)"),
    "gpt2-toy-l": ModelPreset(256, 4, 4, "GPT-2 architecture, 256 wide, 4 layers (~3.2M body params)"),
    # a Llama-architecture student (RoPE, RMSNorm, SwiGLU, grouped-query attention): LoRA's q/v targets
    "llama-toy-xs": ModelPreset(32, 1, 2, "Llama architecture, 32 wide, 1 layer, 1 KV head (~15k body params)",
                                family="llama"),
}.items():
    MODEL_PRESETS.add(_name, _p, _p.description)


def is_preset(name: str) -> bool:
    return name in MODEL_PRESETS


def is_derived(name: str) -> bool:
    """A student built from the teacher (`prune:k=2`, kdbench.pruning): shares its tokenizer."""
    from .pruning import is_prune_spec

    return is_prune_spec(name)


def resolve_model_name(name: str) -> str:
    """Model sources (kdbench.model_sources, e.g. smollm2-135m-instruct) -> a loadable folder or hub
    id, converting on first use; every other name is returned unchanged."""
    return model_sources.resolve_source(name) if model_sources.is_source(name) else name


def check_model_name(name: str, where: str) -> None:
    """Fail early for a name that is neither a preset, an existing path, nor plausibly a hub id."""
    if is_preset(name):
        return
    from .pruning import parse_prune_spec

    if model_sources.is_source(name):
        model_sources.check_source(name, where)
        return
    if is_derived(name):
        if where.startswith("--teacher"):
            raise ModelError(f"{where}: '{name}' builds a student from the teacher; it cannot be the teacher")
        parse_prune_spec(name, where)
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
    if model_sources.offline() and not model_sources.in_hub_cache(name):
        # Offline: a hub id only works if it is already in the local HF cache.
        raise ModelError(f"{where}: '{name}' is not a preset, not a local folder, and not in the local "
                         f"Hugging Face cache (offline mode). Presets: {', '.join(MODEL_PRESETS.names())}")


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
    """A freshly initialised GPT-2 (or Llama) model of a preset size for `tokenizer` (dropout off: see
    cpu-notes; GPT-2 init std 0.02 avoids saturated logits and denormal slowdowns)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from .lean.activations import fuse_activations

    p = MODEL_PRESETS.get(preset, "--teacher/--student")
    if p.family == "llama":
        cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=p.n_embd, intermediate_size=4 * p.n_embd,
                          num_hidden_layers=p.n_layer, num_attention_heads=p.n_head, num_key_value_heads=1,
                          max_position_embeddings=n_positions, bos_token_id=tokenizer.eos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=p.n_embd, n_layer=p.n_layer,
                     n_head=p.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return fuse_activations(GPT2LMHeadModel(cfg))


# ------------------------------------------------------------------------------------------------
# loading


DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ConfigError(f"config key 'dtype': '{name}' is not one of {', '.join(DTYPES)}")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    path = resolve_model_name(path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ModelError(f"could not load a tokenizer from '{path}': {e}") from e
    if tok.eos_token_id is None:
        raise ModelError(f"tokenizer of '{path}' has no EOS token; kdbench ends every response with EOS "
                         "(MiniLLM's format). Set eos_token in its tokenizer_config.json")
    if tok.pad_token_id is None:
        # Families without a pad token (GPT-2, Llama) pad with EOS, as MiniLLM does.
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_config(path: str):
    """The model's config.json only (no weights): cheap enough for up-front validation."""
    from transformers import AutoConfig

    path = resolve_model_name(path)
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"could not read the model config of '{path}': {e}") from e


def embedding_rows(config) -> int:
    """Rows of the model's (output) embedding matrix, which may exceed the tokenizer's vocabulary."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(cfg.vocab_size)


def load_model(path: str, dtype: str = "float32", device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    from .lean.activations import fuse_activations

    path = resolve_model_name(path)
    if (Path(path) / "adapter_config.json").exists():  # a LoRA cell's adapter (kdbench.adapters)
        return _load_adapter(path, dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"could not load a causal LM from '{path}': {e}") from e
    return fuse_activations(model).to(device)  # same outputs to float rounding, a faster forward


def _load_adapter(path: str, dtype: str, device: str):
    """Base model + adapter, merged (one plain model: sampling and metrics need nothing peft-specific)."""
    import json

    from peft import PeftModel

    base = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
    try:
        model = PeftModel.from_pretrained(load_model(base, dtype), path)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ModelError(f"could not load the adapter '{path}' onto its base '{base}': {e}") from e
    return model.merge_and_unload().to(device)


def save_model(model, tokenizer, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def real_vocab(tokenizer) -> dict[str, int]:
    """token -> id over the tokenizer's real vocabulary (base + added tokens), never embedding padding."""
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


def slice_vocab(logits, vocab_size: int | None):
    """Logits cut to the real vocabulary: padded embedding rows are not tokens, and a teacher and
    student padded to different sizes must be compared over the same ids."""
    if vocab_size is None or logits.shape[-1] <= vocab_size:
        return logits
    return logits[..., :vocab_size]


def check_real_models(teacher: str, students: Sequence[str], cross_ok: bool = False) -> None:
    """Before any work: a real student needs a real teacher with the same vocabulary (unless every
    method of the run distils across tokenizers: `cross_ok`), and every real model's embedding must
    cover its tokenizer. Reads tokenizers and config.json only."""
    real_students = [s for s in students if not is_preset(s) and not is_derived(s)]  # pruned: teacher's own vocab
    if is_preset(teacher):
        if real_students:
            raise ConfigError(f"--student '{real_students[0]}' is a real model but --teacher '{teacher}' is a built-in "
                              "preset with its own tokenizer; use a real teacher of the same family")
        return
    t_tok = load_tokenizer(teacher)
    n = len(t_tok)
    for name, where in [(teacher, "--teacher")] + [(s, "--student") for s in real_students]:
        tok = t_tok if name == teacher else load_tokenizer(name)
        if name != teacher and cross_ok and real_vocab(tok) != real_vocab(t_tok):
            n_own = len(tok)  # a student with its own vocabulary: its embedding must cover that one
            if embedding_rows(load_config(name)) < n_own:
                raise ModelError(f"{where} '{name}': embedding has fewer rows than its tokenizer's {n_own} tokens")
            continue
        if name != teacher:
            check_same_vocab(t_tok, tok, f"--teacher '{teacher}' / --student '{name}'")
            if tok.eos_token_id != t_tok.eos_token_id:  # the teacher's tokenizer is used for everyone
                log.warning("%s '%s': EOS token %r differs from the teacher's %r; responses end with the teacher's",
                            where, name, tok.eos_token, t_tok.eos_token)
        rows = embedding_rows(load_config(name))
        if rows < n:
            raise ModelError(f"{where} '{name}': embedding has {rows} rows but the shared tokenizer has {n} tokens; "
                             "the model cannot score every token of the vocabulary")


def check_placement(device: str, teacher_device: str) -> None:
    """--device and --teacher-device name devices that exist here (fails before any work)."""
    import torch

    def ok(name: str, key: str, keyword: str) -> None:
        allowed = f"{keyword} | cpu | cuda | cuda:N | mps"
        if name == keyword:
            return
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError):
            raise ConfigError(f"config key '{key}': '{name}' is not a device; valid: {allowed}") from None
        if dev.type == "cpu":
            return
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"config key '{key}': '{name}' needs CUDA, which this machine does not have "
                                  "(torch.cuda.is_available() is False); use cpu")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                n = torch.cuda.device_count()
                raise ConfigError(f"config key '{key}': '{name}' does not exist; this machine has "
                                  f"{n} CUDA device(s): cuda:0..cuda:{n - 1}")
            return
        if dev.type == "mps":
            if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
                raise ConfigError(f"config key '{key}': 'mps' is not available on this machine; use cpu")
            return
        raise ConfigError(f"config key '{key}': device type '{dev.type}' is not supported; valid: {allowed}")

    ok(device, "device", "auto")
    ok(teacher_device, "teacher_device", "same")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
