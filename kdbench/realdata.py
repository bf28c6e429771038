"""Shared code for the real-data task adapters (tasks/dolly.py, self_inst.py, vicuna.py, sni.py,
unni.py, sst2.py, boolq.py).

What lives here: the task base classes. `RealTask`, the base of every real adapter: where data
is looked for, the Hugging Face fallback, the missing-data error, `describe_load()` and
`filter_by_prompt_length()`; `LabelWordTask` (zero-shot classification) and `BucketedTask`
(S-NI, UnNI). The pure file readers and field accessors are in kdbench/readers.py.

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

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from .config import from_dict
from .errors import ConfigError, DataError
from .readers import (decode_newlines, digest, get_field, get_references, in_bucket, opt_field, parse_bucket,
                      read_jsonl, render_prompt)
from .schema import Example
from .task import Task, TaskOptions


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
                data[split] = {"source": src.label(), "sha256": digest(src.paths)}
        fp["data"] = data
        return fp


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
