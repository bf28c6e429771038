"""A pretraining corpus from files (config `pt_corpus`): MiniLLM's L_PT data on real tasks.

LMOps draws its L_PT batches from OpenWebText cut into 512-token blocks (`--lm-data-dir`); kdbench
reads the documents from plain-text or jsonl files and cuts them into `max_length` blocks with the
same function as the toy world's stream (`data.lm_blocks`). The blocks are a cached stage
(`Stages.lpt_blocks`), keyed by each file's content hash, the tokenizer and the block length.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from .errors import ConfigError

SUFFIXES = (".txt", ".jsonl")


def check_files(paths: Sequence[str]) -> list[Path]:
    """The corpus files, each existing and of a supported type; a clear error otherwise."""
    out = []
    for p in paths:
        path = Path(p).expanduser()
        if path.suffix not in SUFFIXES:
            raise ConfigError(f"config key 'pt_corpus': '{p}' is neither plain text (.txt) nor jsonl (.jsonl)")
        if not path.is_file():
            raise ConfigError(f"config key 'pt_corpus': file '{p}' does not exist")
        out.append(path.resolve())
    if len(set(out)) != len(out):
        raise ConfigError(f"config key 'pt_corpus': a file is listed twice in {list(paths)}")
    return out


def fingerprint(paths: Sequence[str]) -> list[dict]:
    """What determines the corpus: each file's path and sha256 of its bytes."""
    fp = []
    for path in check_files(paths):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        fp.append({"path": str(path), "sha256": h.hexdigest()})
    return fp


def read_documents(paths: Sequence[str]) -> list[str]:
    """Documents in file order: a .txt file's blank-line-separated paragraphs, a .jsonl file's
    "text" fields (errors name the file and line)."""
    docs: list[str] = []
    for path in check_files(paths):
        if path.suffix == ".txt":
            text = path.read_text(encoding="utf-8")
            docs.extend(d.strip() for d in text.split("\n\n") if d.strip())
            continue
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}:{i}: not valid JSON ({e.msg})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    raise ConfigError(f"{path}:{i}: a pt_corpus jsonl line needs a string field \"text\"")
                if rec["text"].strip():
                    docs.append(rec["text"].strip())
    if not docs:
        raise ConfigError(f"config key 'pt_corpus': no documents in {list(paths)}")
    return docs
