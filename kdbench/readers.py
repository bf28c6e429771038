"""Pure file readers for the real-data task adapters: no task, no lookup, no network.

* `render_prompt(instruction, input)`: MiniLLM's Alpaca-style template (no BOS; the response
  target is the raw output, EOS is appended by the tokenisation code in kdbench/data.py).
* Strict readers (`read_jsonl`, `read_json`, `read_tsv`, `read_lines`) and field accessors
  (`get_field`, `opt_field`, `get_references`, `instances_of`) that raise `DataError` with
  file:line (or file plus JSON path) and the field name on malformed input.
* MiniLLM's length buckets (`parse_bucket`, `in_bucket`) and the content digest of data files.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import ConfigError, DataError

# -- the prompt template ---------------------------------------------------------------------------

PREAMBLE_NO_INPUT = ("Below is an instruction that describes a task. "
                     "Write a response that appropriately completes the request.")
PREAMBLE_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                       "further context. Write a response that appropriately completes the request.")


def render_prompt(instruction: str, input: str = "") -> str:
    """MiniLLM's Alpaca-style prompt; an empty `input` selects the variant without an Input section.

    Concatenation rather than str.format so braces in the instruction are never interpreted.
    """
    if input:
        return (PREAMBLE_WITH_INPUT + "\n\n### Instruction:\n" + instruction
                + "\n\n### Input:\n" + input + "\n\n### Response:\n")
    return PREAMBLE_NO_INPUT + "\n\n### Instruction:\n" + instruction + "\n\n### Response:\n"


def decode_newlines(text: str) -> str:
    """MiniLLM writes `<n>` for a newline in its one-line-per-prompt files; its loader undoes it."""
    return text.replace("<n>", "\n")


# -- strict readers --------------------------------------------------------------------------------

def read_text(path: str | Path) -> str:
    """Whole file as UTF-8 text; DataError (with line) on bad bytes, DataError on an empty file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        "the file must be saved as UTF-8") from None
    text = text.removeprefix("\ufeff")  # tolerate a BOM: editors add it and it carries no data
    if not text.strip():
        raise DataError(f"{path}: file is empty (expected at least one record)")
    return text


def _lines(text: str) -> Iterable[tuple[int, str]]:
    # split on "\n" only: str.splitlines() would also split on U+2028, which JSON allows raw in strings
    for n, line in enumerate(text.split("\n"), 1):
        yield n, line.rstrip("\r")


def read_jsonl(path: str | Path) -> list[tuple[str, dict]]:
    """Records of a JSON-lines file as (where, record) with where = 'file:line'; blank lines skipped."""
    path = Path(path)
    out: list[tuple[str, dict]] = []
    for n, line in _lines(read_text(path)):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: invalid JSON at column {e.colno}: {e.msg}") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{n}: expected a JSON object per line, got {_type_name(rec)}")
        out.append((f"{path}:{n}", rec))
    return out


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON at column {e.colno}: {e.msg}") from None


def read_tsv(path: str | Path) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(header, rows) of a tab-separated file with a header line; every row must have as many fields.

    No quote handling: GLUE's TSVs are unquoted and contain literal quote characters.
    """
    path = Path(path)
    header: list[str] | None = None
    rows: list[tuple[str, list[str]]] = []
    for n, line in _lines(read_text(path)):
        if not line.strip():
            continue
        cells = line.split("\t")
        if header is None:
            header = [c.strip() for c in cells]
            continue
        if len(cells) != len(header):
            raise DataError(f"{path}:{n}: expected {len(header)} tab-separated fields "
                            f"(header: {', '.join(header)}), got {len(cells)}")
        rows.append((f"{path}:{n}", cells))
    if not rows:
        raise DataError(f"{path}: no data rows after the header line")
    return header or [], rows


def read_lines(path: str | Path) -> list[str]:
    """Non-blank stripped lines (task lists)."""
    return [line.strip() for _, line in _lines(read_text(path)) if line.strip()]


# -- field accessors -------------------------------------------------------------------------------

_TYPE_NAMES = {str: "a string", list: "a list", dict: "an object", bool: "a boolean", int: "an integer",
               float: "a number", type(None): "null"}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _is(value: Any, typ: type | tuple[type, ...]) -> bool:
    types = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(value, bool) and bool not in types:  # bool is an int subclass; never accept it as int
        return False
    return isinstance(value, types)


def _expected(typ: type | tuple[type, ...]) -> str:
    types = typ if isinstance(typ, tuple) else (typ,)
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def get_field(rec: dict, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    """rec[key], which must exist and have type `typ`."""
    if key not in rec:
        present = ", ".join(sorted(map(str, rec))) or "none"
        raise DataError(f"{where}: missing field '{key}' (fields present: {present})")
    value = rec[key]
    if not _is(value, typ):
        raise DataError(f"{where}: field '{key}' must be {_expected(typ)}, got {_type_name(value)}")
    return value


def opt_field(rec: dict, key: str, typ: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    """rec[key] if present (and not null), type-checked; else `default`."""
    if rec.get(key) is None:
        return default
    return get_field(rec, key, typ, where)


def get_references(rec: dict, key: str, where: str) -> list[str]:
    """A reference field: one string, or a non-empty list of strings (S-NI/UnNI keep all of them)."""
    value = get_field(rec, key, (str, list), where)
    if isinstance(value, str):
        return [value]
    if not value:
        raise DataError(f"{where}: field '{key}' is an empty list (need at least one reference)")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise DataError(f"{where}: field '{key}[{i}]' must be a string, got {_type_name(v)}")
    return list(value)


# -- MiniLLM length buckets ------------------------------------------------------------------------

def instances_of(rec: dict, where: str) -> list[tuple[int, str, dict]]:
    """(k, location, instance) for each entry of rec['instances'], the Self-Instruct / Unnatural
    Instructions layout (one instruction, several {input, output} instances); validated."""
    instances = get_field(rec, "instances", list, where)
    if not instances:
        raise DataError(f"{where}: field 'instances' is an empty list (need at least one {{input, output}})")
    out = []
    for k, inst in enumerate(instances):
        w = f"{where}: instances[{k}]"
        if not isinstance(inst, dict):
            raise DataError(f"{w}: expected an object with 'input' and 'output', got {type(inst).__name__}")
        out.append((k, w, inst))
    return out


def parse_bucket(spec: str, where: str = "length_bucket") -> tuple[int, int | None] | None:
    """'11_' -> (11, None); '6_10' -> (6, 10); 'all' -> None. Bounds are inclusive word counts."""
    if spec == "all":
        return None
    m = re.fullmatch(r"(\d+)_(\d*)", spec) if isinstance(spec, str) else None
    if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
        raise ConfigError(f"{where}: '{spec}' is not a length bucket. Use 'A_B' (A..B words, inclusive), "
                          "'A_' (at least A words) or 'all'; MiniLLM's paper buckets are 0_5, 6_10 and 11_.")
    lo, hi = int(m.group(1)), (int(m.group(2)) if m.group(2) else None)
    return lo, hi


def in_bucket(reference: str, bucket: tuple[int, int | None] | None) -> bool:
    """Whitespace word count of the reference inside the bucket.

    MiniLLM bucketed by tokenizer tokens, so its processed bucket folders are used as they are and
    this word rule only applies to data kdbench buckets itself (upstream files, flat files).
    """
    if bucket is None:
        return True
    n = len(reference.split())
    lo, hi = bucket
    return n >= lo and (hi is None or n <= hi)


# -- content digest --------------------------------------------------------------------------------

_DIGESTS: dict[tuple, str] = {}


def digest(paths: Sequence[Path]) -> str:
    """sha256 of the file contents (names included when several); a folder contributes its *.json files.
    Memoised on (path, size, mtime) so repeated fingerprints do not reread large files."""
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for f in files:
            if len(files) > 1:  # a lone file hashes to its plain sha256 (comparable with SOURCE.md)
                h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]
