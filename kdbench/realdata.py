"""Shared code for the real-data task adapters (tasks/dolly.py, self_inst.py, vicuna.py, sni.py,
unni.py, sst2.py, boolq.py).

What lives here:

* `render_prompt(instruction, input)`: MiniLLM's Alpaca-style template (no BOS; the response
  target is the raw output, EOS is appended by the tokenisation code in kdbench/data.py).
* Strict readers (`read_jsonl`, `read_json`, `read_tsv`) and field accessors that raise
  `DataError` with file:line (or file plus JSON path) and the field name on malformed input.
* `RealTask`, the base of every real adapter: where data is looked for, the Hugging Face
  fallback, the missing-data error, `describe_load()` and `filter_by_prompt_length()`.

Where data is looked for, in order:

1. a local data root: `TaskOptions.data_dir`, then the `KDBENCH_DATA` environment variable. Under
   a root, each adapter accepts several folder names (ours, e.g. `self_inst`, and MiniLLM's, e.g.
   `self-inst`); the root may also be the task folder itself (`data_dir=/data/dolly`). Within a
   folder, MiniLLM's processed files win over the upstream formats.
2. the Hugging Face dataset named in the adapter's docstring, via `datasets.load_dataset`, only
   when nothing local was found and neither HF_DATASETS_OFFLINE nor HF_HUB_OFFLINE is set to 1.
3. otherwise a `DataError` listing every path looked for and how to get the data.

Task-specific settings come from `TaskOptions.extra` (the benchmark's `task_options.<task>`), or
as keyword arguments to the constructor (these win); each adapter declares them as a dataclass
(`Settings`) and unknown keys are rejected with a did-you-mean.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Sequence

from .config import from_dict
from .errors import ConfigError, DataError
from .schema import Example
from .task import Task, TaskOptions

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


# -- where data comes from -------------------------------------------------------------------------

def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


@dataclass(frozen=True)
class Source:
    """Where one split's data comes from: local files of a known layout, or a hub dataset."""

    kind: str  # layout name, e.g. "minillm" or "upstream"; "hf" for the hub
    paths: tuple[Path, ...] = ()
    hf: str = ""  # e.g. "MiniLLM/dolly (valid.jsonl)"

    def label(self) -> str:
        return f"hf:{self.hf}" if self.kind == "hf" else " + ".join(str(p) for p in self.paths)


@dataclass
class LoadInfo:
    """Per-split bookkeeping behind describe_load()."""

    source: str
    dropped: Counter = field(default_factory=Counter)
    notes: dict[str, Any] = field(default_factory=dict)


class RealTask(Task):
    """Base of every real-data adapter: lookup, hub fallback, errors, load reports, prompt filter.

    Subclasses set `folders` (accepted folder names under a data root), `layouts(split)` (relative
    file sets per split, best first), `hf_source(split)` and implement `read(split, source)`.
    """

    folders: ClassVar[tuple[str, ...]] = ()
    how_to_get: ClassVar[str] = ""
    Settings: ClassVar[type | None] = None  # dataclass of task-specific settings, or None

    def __init__(self, options: TaskOptions | None = None, **settings: Any):
        super().__init__(options)
        self.settings = self._make_settings(settings)
        self._info: dict[str, LoadInfo] = {}
        self._looked: dict[str, list[str]] = {}
        self._id_split: dict[str, str] = {}
        self._full: dict[str, list[Example]] = {}  # uncapped examples per split
        self._too_long: dict[str, set[str]] = {}

    # -- settings ----------------------------------------------------------------------------------
    def _make_settings(self, overrides: dict[str, Any]) -> Any:
        extra = getattr(self.options, "extra", None) or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"task_options.{self.name} must be a mapping, got {type(extra).__name__}")
        merged = {**extra, **overrides}
        if self.Settings is None:
            if merged:
                raise ConfigError(f"task '{self.name}' takes no task_options, got: {', '.join(sorted(merged))}")
            return None
        return from_dict(self.Settings, merged, where=f"task_options.{self.name}")

    # -- lookup ------------------------------------------------------------------------------------
    def data_roots(self) -> list[Path]:
        roots: list[Path] = []
        for r in (self.options.data_dir, os.environ.get("KDBENCH_DATA")):
            if r:
                p = Path(r).expanduser()
                if p not in roots:
                    roots.append(p)
        return roots

    def task_dirs(self) -> list[Path]:
        dirs: list[Path] = []
        for root in self.data_roots():
            cands = ([root] if root.name in self.folders else []) + [root / f for f in self.folders]
            for d in cands:
                if d not in dirs:
                    dirs.append(d)
        return dirs

    def layouts(self, split: str) -> list[tuple[str, tuple[str, ...]]]:
        """[(kind, relative paths that must all exist)], best first. A path ending in '/' is a folder."""
        raise NotImplementedError

    def hf_source(self, split: str) -> Source | None:
        return None

    def find_local(self, split: str, layouts: Sequence[tuple[str, tuple[str, ...]]] | None = None,
                   record_as: str | None = None) -> Source | None:
        looked = self._looked.setdefault(record_as or split, [])
        for d in self.task_dirs():
            for kind, rels in (self.layouts(split) if layouts is None else layouts):
                paths = tuple(d / r for r in rels)
                desc = " + ".join(str(p) for p in paths)
                if desc not in looked:
                    looked.append(desc)
                if all(p.is_dir() if str(r).endswith("/") else p.is_file() for p, r in zip(paths, rels)):
                    return Source(kind, paths)
        return None

    def resolve(self, split: str) -> Source:
        """The source of `split`: local files, else the hub when allowed, else a DataError."""
        src = self.find_local(split)
        if src is not None:
            return src
        hub = self.hf_source(split)
        if hub is not None and not _offline():
            return hub
        raise self.missing_error(split, hub)

    def missing_error(self, split: str, hub: Source | None, hub_error: str = "") -> DataError:
        looked = self._looked.get(split, [])
        if looked:
            where = "Looked for (first match wins):\n" + "\n".join(f"  - {p}" for p in looked)
        else:
            where = ("No local data folder is configured: set data_dir in the benchmark config "
                     "(TaskOptions.data_dir) or the KDBENCH_DATA environment variable.")
        absent = [str(r) for r in self.data_roots() if not r.is_dir()]
        if absent:  # most often a typo in data_dir / KDBENCH_DATA
            where += "\nThese data roots do not exist: " + ", ".join(absent)
        if hub is None:
            hub_line = "No Hugging Face fallback for this split."
        elif hub_error:
            hub_line = f"Hugging Face dataset {hub.hf} could not be loaded: {hub_error}"
        else:
            hub_line = (f"Hugging Face dataset {hub.hf} was not tried: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set; "
                        "unset them to download it.")
        return DataError(f"no data found for task '{self.name}' split '{split}'.\n{where}\n{hub_line}\n"
                         f"How to get it: {self.how_to_get}")

    def load_hf_rows(self, task_split: str, src: Source, repo: str, /, **kwargs: Any) -> list[tuple[str, dict]]:
        """Rows of `datasets.load_dataset(repo, **kwargs)` as (where, record); failures become a DataError
        with the lookup list. Positional-only, so `split=` in kwargs is the hub's split name."""
        try:
            import datasets

            ds = datasets.load_dataset(repo, **kwargs)
        except Exception as e:  # network, auth, missing file: all end the same way for the user
            raise self.missing_error(task_split, src, f"{type(e).__name__}: {e}") from None
        return [(f"hf:{src.hf} row {i + 1}", dict(r)) for i, r in enumerate(ds)]

    # -- loading -----------------------------------------------------------------------------------
    def read(self, split: str, src: Source) -> tuple[list[Example], LoadInfo]:
        raise NotImplementedError

    def load_split(self, split: str) -> list[Example]:
        exs, info = self.read(split, self.resolve(split))
        self._set_loaded(split, exs, info)
        return exs

    def _set_loaded(self, split: str, exs: list[Example], info: LoadInfo) -> None:
        self._info[split] = info
        self._full[split] = exs
        for ex in exs:
            self._id_split[ex.id] = split
        ids = [ex.id for ex in exs]
        if len(set(ids)) != len(ids):
            dup = next(i for i, c in Counter(ids).items() if c > 1)
            raise DataError(f"task '{self.name}' split '{split}' ({info.source}): duplicate example id '{dup}'")

    def processed_examples(self, split: str, rows: Sequence[tuple[str, dict]], info: LoadInfo,
                           ref_filter: Callable[[list[str]], bool] | None = None,
                           drop_reason: str = "") -> list[Example]:
        """Examples from MiniLLM-processed records (instruction/input/output/prompt).

        A stored prompt (with `<n>` decoded) is kept as MiniLLM evaluated it; where it differs
        from `render_prompt(instruction, input)` the count is reported as a note in describe_load().
        """
        out: list[Example] = []
        mismatch = 0
        for i, (where, rec) in enumerate(rows):
            refs = get_references(rec, "output", where)
            prompt = opt_field(rec, "prompt", str, where)
            instruction = opt_field(rec, "instruction", str, where)
            if instruction is None and prompt is None:
                get_field(rec, "instruction", str, where)  # raises: names the missing field
            inp = opt_field(rec, "input", str, where, "")
            built = render_prompt(instruction, inp) if instruction is not None else None
            if prompt is None:
                prompt = built
            else:
                prompt = decode_newlines(prompt)
                if built is not None and prompt != built:
                    mismatch += 1
            if ref_filter is not None and not ref_filter(refs):
                info.dropped[drop_reason] += 1
                continue
            meta = {k: v for k, v in rec.items() if k not in ("instruction", "input", "output", "prompt")}
            meta["source"] = where
            out.append(Example(id=f"{self.name}-{split}-{i:05d}", instruction=instruction or "", input=inp,
                               prompt=prompt, references=refs, meta=meta))
        if mismatch:
            info.notes["prompt_differs_from_template"] = mismatch
        return out

    def rows_of(self, split: str, src: Source, hf_repo: str = "", hf_file: str = "") -> list[tuple[str, dict]]:
        """JSONL rows of a one-file local source, or of `hf_file` in the hub repo."""
        if src.kind == "hf":
            return self.load_hf_rows(split, src, hf_repo, data_files={"rows": hf_file}, split="rows")
        return read_jsonl(src.paths[0])

    # -- reports and filters -----------------------------------------------------------------------
    def describe_load(self, split: str | None = None) -> dict[str, Any]:
        """{loaded, dropped: {reason: count}, source} for one split, or summed over all splits
        (then with a per-split breakdown under 'splits'). Loads the data; raises DataError if absent.
        `loaded` counts what the runner gets: after the max_*_examples cap and any prompt-length drops.
        """
        if split is None:
            parts = {s: self.describe_load(s) for s in self.splits}
            dropped: Counter = Counter()
            for p in parts.values():
                dropped.update(p["dropped"])
            sources = {p["source"] for p in parts.values()}
            return {"loaded": sum(p["loaded"] for p in parts.values()), "dropped": dict(dropped),
                    "source": sources.pop() if len(sources) == 1 else {s: p["source"] for s, p in parts.items()},
                    "splits": parts}
        exs = self.examples(split)
        info = self._info[split]
        dropped = Counter(info.dropped)
        full = len(self._full[split])
        if full > len(exs):
            dropped["over_max_examples_cap"] += full - len(exs)
        too_long = self._too_long.get(split, set())
        if too_long:
            dropped["prompt_too_long"] += len(too_long)
        out = {"loaded": len(exs) - len(too_long), "dropped": {k: v for k, v in dropped.items() if v},
               "source": info.source}
        if info.notes:
            out["notes"] = dict(info.notes)
        return out

    def filter_by_prompt_length(self, examples: Sequence[Example], count_tokens: Callable[[str], int],
                                max_prompt_tokens: int = 256) -> tuple[list[Example], int]:
        """Drop (never truncate) examples whose prompt has more than `max_prompt_tokens` tokens.

        Returns (kept, dropped_count); the drops also show in describe_load() of their split.
        """
        kept: list[Example] = []
        dropped = 0
        for ex in examples:
            if count_tokens(ex.prompt) > max_prompt_tokens:
                dropped += 1
                self._too_long.setdefault(self._id_split.get(ex.id, "?"), set()).add(ex.id)
            else:
                kept.append(ex)
        return kept, dropped

    def fingerprint(self) -> dict:
        """Adds what the data really is: the resolved source of every split and its content digest,
        because KDBENCH_DATA and the folder lookup are not visible in data_dir alone."""
        fp = super().fingerprint()
        fp["settings"] = asdict(self.settings) if self.settings is not None else {}
        data: dict[str, Any] = {}
        for split in self.splits:
            try:
                src = self.find_local(split)
            except DataError as e:
                data[split] = f"error: {e}"
                continue
            if src is None:
                hub = self.hf_source(split)
                data[split] = f"hf:{hub.hf}" if hub is not None else "missing"
            else:
                data[split] = {"source": src.label(), "sha256": _digest(src.paths)}
        fp["data"] = data
        return fp


_DIGESTS: dict[tuple, str] = {}


def _digest(paths: Sequence[Path]) -> str:
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


# -- classification tasks (calibration) ------------------------------------------------------------

class LabelWordTask(RealTask):
    """Zero-shot classification with label words: the reference is the gold label word and
    meta carries {'label_words': [...], 'label': gold index} for the ECE metric."""

    default_metrics: ClassVar[tuple[str, ...]] = ("ece",)
    label_words: ClassVar[tuple[str, ...]] = ()
    instruction: ClassVar[str] = ""

    def make_example(self, ex_id: str, input_text: str, label: int, meta: dict[str, Any]) -> Example:
        return Example(id=ex_id, instruction=self.instruction, input=input_text,
                       prompt=render_prompt(self.instruction, input_text),
                       references=[self.label_words[label]],
                       meta={"label_words": list(self.label_words), "label": label, **meta})


# -- length-bucketed instruction sets (S-NI, UnNI) -------------------------------------------------

@dataclass
class BucketSettings:
    """length_bucket: MiniLLM's response-length bucket, 'A_B' / 'A_' / 'all' (default '11_', the
    paper's main setting). Selects the processed bucket folder `<bucket>/valid.jsonl`; data without
    bucket folders (upstream files, a flat valid.jsonl) is bucketed here by the whitespace word count
    of the first reference."""

    length_bucket: str = "11_"  # validated by BucketedTask.__init__, which names the task in the error


class BucketedTask(RealTask):
    """Shared lookup for S-NI and UnNI: processed bucket folder, then a flat processed file,
    then the upstream layouts of the subclass (`upstream_layouts`)."""

    hf_repo: ClassVar[str] = ""

    def __init__(self, options: TaskOptions | None = None, **settings: Any):
        super().__init__(options, **settings)
        parse_bucket(self.settings.length_bucket, f"task_options.{self.name}.length_bucket")

    @property
    def bucket(self) -> tuple[int, int | None] | None:
        return parse_bucket(self.settings.length_bucket)

    def upstream_layouts(self) -> list[tuple[str, tuple[str, ...]]]:
        return []

    def layouts(self, split: str) -> list[tuple[str, tuple[str, ...]]]:
        b = self.settings.length_bucket
        out: list[tuple[str, tuple[str, ...]]] = []
        if b != "all":
            out += [("bucket", (f"minillm/{b}/valid.jsonl",)), ("bucket", (f"{b}/valid.jsonl",))]
        out += [("flat", ("minillm/valid.jsonl",)), ("flat", ("valid.jsonl",))]
        return out + self.upstream_layouts()

    def hf_source(self, split: str) -> Source | None:
        b = self.settings.length_bucket
        return None if b == "all" else Source("hf", hf=f"{self.hf_repo} ({b}/valid.jsonl)")

    def read_processed(self, split: str, src: Source) -> tuple[list[Example], LoadInfo]:
        b = self.settings.length_bucket
        rows = self.rows_of(split, src, self.hf_repo, f"{b}/valid.jsonl")
        info = LoadInfo(src.label())
        bucket = self.bucket
        if src.kind in ("bucket", "hf"):
            info.notes["length_bucket"] = f"{b} (MiniLLM's bucket folder, used as is)"
            flt = None
        else:
            info.notes["length_bucket"] = f"{b} (whitespace words of the first reference)"
            flt = None if bucket is None else (lambda refs: in_bucket(refs[0], bucket))
        return self.processed_examples(split, rows, info, flt, "outside_length_bucket"), info
