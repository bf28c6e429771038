"""Dolly (databricks-dolly-15k): MiniLLM's training task and its 500-example test set."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from kdbench.errors import ConfigError, DataError
from kdbench.readers import get_field, opt_field, read_jsonl, render_prompt
from kdbench.realdata import LoadInfo, RealTask, Source
from kdbench.schema import Example
from kdbench.task import TASKS


@dataclass
class DollySettings:
    dev_num: int = 1000  # dev = first dev_num records of the full pool (MiniLLM's --dev-num 1000)
    fallback_dev_num: int = 100  # with only dev.jsonl: its last N records become dev, the rest train
    # pretrain_texts() = the train split as plain documents, so built-in tiny presets (tiny-real) can
    # pretrain base models; off by default: real base models come pretrained (MiniLLM's PT corpus is OpenWebText)
    pretrain_on_train: bool = False

    def __post_init__(self) -> None:
        for k in ("dev_num", "fallback_dev_num"):
            if getattr(self, k) < 1:
                raise ConfigError(f"task_options.dolly.{k} must be >= 1, got {getattr(self, k)}")


@TASKS.register("dolly")
class Dolly(RealTask):
    """Dolly instruction following (MiniLLM's training task; Rouge-L against the gold response).

    Files looked for under `<root>/dolly/` (or a root that is itself the dolly folder), each name
    also tried inside a `minillm/` subfolder first:

    * test: `valid.jsonl` — MiniLLM's 500 held-out examples (instruction/input/output/prompt/topic).
    * train and dev, first match wins:
      1. the full pool — MiniLLM's `raw.jsonl` (processed format) or the upstream
         `databricks-dolly-15k.jsonl` (instruction/context/response/category): dev = its first
         `dev_num` (1000) records, train = the rest, as MiniLLM's process_data_dolly.py splits it;
      2. `train.jsonl` + `dev.jsonl`: MiniLLM's processed train and validation files, as they are;
      3. fallback, `dev.jsonl` alone (MiniLLM's 1000-record validation split, as in the shared data
         folder): train = all but its last `fallback_dev_num` (100) records, dev = those last 100.
         This is a small stand-in for pipeline runs, not MiniLLM's training set.
      In every case, records whose (instruction, input) pair occurs in the test split are removed
      from train and dev first (reported as dropped 'overlaps_test'): the upstream 15k file
      contains the test examples, and Dolly itself has a few duplicates.
    * Hub fallback: `MiniLLM/dolly` (`valid.jsonl` for test, `raw.jsonl` as the pool).

    Task options (task_options.dolly): dev_num (1000), fallback_dev_num (100), pretrain_on_train (false:
    when true, `pretrain_texts()` returns each train record's instruction, context and response as one
    plain document, the pretraining / LM-loss text for built-in preset models; never dev or test text).
    Prompt-length filtering (MiniLLM drops prompts over 256 tokens) is the runner's call to
    `filter_by_prompt_length` with the student tokenizer.
    """

    name = "dolly"
    description = "Dolly-15k instruction following: MiniLLM's train task and 500-example test set"
    version = 1
    splits = ("train", "dev", "test")
    # MiniLLM's metrics on Dolly: Rouge-L and GPT-4 feedback (Table 1; judge runs when one is configured),
    # Dist-4 and test LM loss (reference/minillm.md §3.4), exposure bias ExAccErr (Figure 6)
    default_metrics = ("rouge_l", "judge", "dist4", "lm_loss", "exposure_bias")
    no_repeat_ngram_size = 6  # LMOps evaluate.py's --no-repeat-ngram-size default (reference/minillm.md §3.1)
    folders = ("dolly", "databricks-dolly-15k")
    Settings = DollySettings
    how_to_get = ("put MiniLLM's valid.jsonl (and raw.jsonl for training) from huggingface.co/datasets/MiniLLM/dolly "
                  "into <data_dir>/dolly/, or the upstream databricks-dolly-15k.jsonl for train/dev.")

    HF_REPO = "MiniLLM/dolly"

    def __init__(self, options=None, **settings: Any):
        super().__init__(options, **settings)
        self._train_dev: dict[str, tuple[list[Example], LoadInfo]] | None = None

    def layouts(self, split: str) -> list[tuple[str, tuple[str, ...]]]:
        if split == "test":
            return [("minillm", ("minillm/valid.jsonl",)), ("minillm", ("valid.jsonl",))]
        out: list[tuple[str, tuple[str, ...]]] = []
        for sub in ("minillm/", ""):
            out += [("pool", (f"{sub}raw.jsonl",)), ("pool", (f"{sub}databricks-dolly-15k.jsonl",))]
        for sub in ("minillm/", ""):
            out.append(("pair", (f"{sub}train.jsonl", f"{sub}dev.jsonl")))
        for sub in ("minillm/", ""):
            out.append(("dev-only", (f"{sub}dev.jsonl",)))
        return out

    def hf_source(self, split: str) -> Source:
        return Source("hf", hf=f"{self.HF_REPO} ({'valid.jsonl' if split == 'test' else 'raw.jsonl'})")

    def pretrain_texts(self) -> list[str] | None:
        if not self.settings.pretrain_on_train:
            return None
        return ["\n\n".join(t for t in (ex.instruction, ex.input, ex.references[0]) if t)
                for ex in self.examples("train")]

    # -- records -----------------------------------------------------------------------------------
    def _examples(self, split: str, rows: Sequence[tuple[str, dict]], info: LoadInfo) -> list[Example]:
        """Processed (has 'output') or upstream Dolly-15k (has 'response'); decided by the first record."""
        if not rows:
            return []
        first_where, first = rows[0]
        if "output" in first:
            return self.processed_examples(split, rows, info)
        if "response" not in first:
            present = ", ".join(sorted(first)) or "none"
            raise DataError(f"{first_where}: missing field 'output' (MiniLLM format) or 'response' "
                            f"(databricks-dolly-15k format); fields present: {present}")
        out = []
        for i, (where, rec) in enumerate(rows):
            instruction = get_field(rec, "instruction", str, where)
            context = get_field(rec, "context", str, where)
            response = get_field(rec, "response", str, where)
            category = opt_field(rec, "category", str, where)
            meta: dict[str, Any] = {"source": where}
            if category is not None:
                meta["topic"] = category  # MiniLLM's name for the Dolly category
            out.append(Example(id=f"dolly-{split}-{i:05d}", instruction=instruction, input=context,
                               prompt=render_prompt(instruction, context), references=[response], meta=meta))
        return out

    def _rows(self, split: str, src: Source, path_index: int = 0) -> list[tuple[str, dict]]:
        if src.kind == "hf":
            f = "valid.jsonl" if split == "test" else "raw.jsonl"
            return self.load_hf_rows(split, src, self.HF_REPO, data_files={"rows": f}, split="rows")
        return read_jsonl(src.paths[path_index])

    # -- splits ------------------------------------------------------------------------------------
    def read(self, split: str, src: Source) -> tuple[list[Example], LoadInfo]:
        if split == "test":
            info = LoadInfo(src.label())
            return self._examples("test", self._rows("test", src), info), info
        if self._train_dev is None:
            self._train_dev = self._split_pool(src)
        return self._train_dev[split]

    def _test_pairs(self) -> set[tuple[str, str]] | None:
        try:
            self.examples("test")  # loads (and caches) the uncapped split as a side effect
        except DataError:
            return None
        return {(ex.instruction, ex.input) for ex in self._full["test"]}

    def _split_pool(self, src: Source) -> dict[str, tuple[list[Example], LoadInfo]]:
        s = self.settings
        test_pairs = self._test_pairs()

        def clean(exs: list[Example], info: LoadInfo) -> list[Example]:
            if test_pairs is None:
                info.notes["overlap_check"] = "skipped: no test split found"
                return exs
            kept = [ex for ex in exs if (ex.instruction, ex.input) not in test_pairs]
            if len(kept) < len(exs):
                info.dropped["overlaps_test"] += len(exs) - len(kept)
            return kept

        label = src.label()
        if src.kind in ("pool", "hf"):
            info_pool = LoadInfo(label)
            pool = clean(self._examples("pool", self._rows("train", src), info_pool), info_pool)
            parts = {"dev": pool[: s.dev_num], "train": pool[s.dev_num:]}
            rules = {"dev": f"first {s.dev_num} records of the pool", "train": f"records after the first {s.dev_num}"}
            infos = {k: LoadInfo(label, notes={"split_rule": rule}) for k, rule in rules.items()}
            # drops happened before the cut; attribute them by position would be guesswork, so report on train
            infos["train"].dropped.update(info_pool.dropped)
            infos["train"].notes.update(info_pool.notes)
        elif src.kind == "pair":
            infos = {"train": LoadInfo(str(src.paths[0])), "dev": LoadInfo(str(src.paths[1]))}
            parts = {}
            for k, idx in (("train", 0), ("dev", 1)):
                parts[k] = clean(self._examples(k, self._rows(k, src, idx), infos[k]), infos[k])
        else:  # dev-only fallback
            n = s.fallback_dev_num
            info_pool = LoadInfo(label)
            pool = clean(self._examples("pool", self._rows("train", src), info_pool), info_pool)
            if len(pool) <= n:
                raise DataError(f"{label}: {len(pool)} usable records; the dev-only fallback needs more than "
                                f"fallback_dev_num={n} (train = all but the last {n}, dev = the last {n})")
            parts = {"train": pool[:-n], "dev": pool[-n:]}
            infos = {"train": LoadInfo(label, notes={"split_rule": f"fallback: all but the last {n} of dev.jsonl"}),
                     "dev": LoadInfo(label, notes={"split_rule": f"fallback: last {n} records of dev.jsonl"})}
            infos["train"].dropped.update(info_pool.dropped)
            infos["train"].notes.update(info_pool.notes)
        for k, exs in parts.items():
            for j, ex in enumerate(exs):
                ex.id = f"dolly-{k}-{j:05d}"  # ids follow the split, not the pool position (see meta.source)
        return {k: (parts[k], infos[k]) for k in ("train", "dev")}
