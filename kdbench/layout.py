"""The run-folder layout: the one module that knows where stages and cells live and what they hold.

The runner writes through it; the report, `summarize` and the dry run read through it. Nothing else
names a folder under a run or cache directory, so writers and readers cannot drift (no torch import).

    <out>/config.json, run_info.json, leaderboard.*, report.html, plots/
    <out>/cells/train/<student>/<method>[/tune-<point>][/train-seed<k>]/
                                                     config.json, model/, history.json, result.json, DONE
    <out>/cells/train/<student>/<method>/tuning.json  grid, dev scores, selected point (--tune)
    <out>/cells/train/<student>/_base/ , cells/train/_teacher/  error.json of a failed shared stage
    <out>/cells/eval/<group>/<model>[/train-seed<k>]/<task>/seed<e>/
                                                     generations.jsonl, per_example.jsonl, metrics.json, DONE
    <cache>/<kind>-<key>/                            a cached stage (stage.json, DONE, its outputs)
    <cache>/.<kind>-<key>.partial/                   a stage being built (resumable; renamed when done)
    <out>/merged_from.json                           a merged run (`summarize A B --out M`): its source runs
                                                     and the source of every cell
    <out>/exports/                                   lm-eval-shaped results, per-example scores (summarize)
    <model folder>/README.md                         the student's Hugging Face model card (summarize)

<group> is the student's label (or `_teacher`); the `train-seed<k>` level exists only for models that
were trained per training seed (distilled students), never for the teacher or the student base.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, TypedDict

from .io import is_done, mark_done, read_json  # noqa: F401 - DONE markers are part of the layout

TEACHER = "teacher"  # row name of the teacher
BASE = "student-base"  # row name of the untrained student
REFERENCE_ROWS = (TEACHER, BASE)
TEACHER_GROUP = "_teacher"  # eval-cell group (and failure folder) of the teacher
BASE_FOLDER = "_base"  # train-cell folder recording a failed student-base stage
TRAIN_SEED_PREFIX = "train-seed"
TUNE_PREFIX = "tune-"
EVAL_SEED_PREFIX = "seed"


def label_of(name: str) -> str:
    """A filesystem-safe label for a model name or path (prune:k=2 -> prune_k=2; org/name -> org--name)."""
    base = Path(name).name if (os.sep in name and Path(name).expanduser().exists()) else name
    return base.replace("/", "--").replace(":", "_")


def group_of(student: Optional[str]) -> str:
    """Eval-cell group of a row: the student's label, or the teacher group."""
    return TEACHER_GROUP if student is None else label_of(student)


def student_of_group(group: str) -> Optional[str]:
    return None if group == TEACHER_GROUP else group


# ------------------------------------------------------------------------------------------------
# typed records


class TrainResult(TypedDict, total=False):
    """result.json of a train cell."""

    model_path: str
    key: str
    method: str
    student: str
    train_seed: Optional[int]
    wall_time_s: float
    train_wall_time_s: Optional[float]
    counters: dict[str, Any]
    budget: dict[str, Any]
    selected_step: Optional[int]


class EvalRecord(TypedDict, total=False):
    """metrics.json of an eval cell."""

    group: str
    model: str
    task: str
    seed: int
    train_seed: Optional[int]
    metrics: dict[str, float]
    n_examples: int
    task_version: Any
    metric_versions: dict[str, Any]
    artifacts: dict[str, Any]
    wall_time_s: float


@dataclass(frozen=True)
class CellRef:
    """What a cell path means: which leaderboard row (and task, seeds) it belongs to."""

    kind: str  # train | eval | stage
    student: Optional[str]  # student label; None for the teacher
    method: Optional[str]  # row name: teacher, student-base or a method
    task: Optional[str] = None
    seed: Optional[int] = None  # evaluation seed
    train_seed: Optional[int] = None


def _seed(part: str, prefix: str) -> Optional[int]:
    if part.startswith(prefix) and part[len(prefix):].lstrip("-").isdigit():
        return int(part[len(prefix):])
    return None


def parse_cell(rel: str | Path) -> CellRef:
    """Parse a cell path relative to the run folder (cells/train/..., cells/eval/...) back."""
    parts = Path(rel).parts
    if len(parts) >= 3 and parts[1] == "train":
        if parts[2] == TEACHER_GROUP:
            return CellRef("stage", None, TEACHER)
        method = None
        if len(parts) >= 4:
            method = BASE if parts[3] == BASE_FOLDER else parts[3]
        ts = _seed(parts[4], TRAIN_SEED_PREFIX) if len(parts) >= 5 else None
        return CellRef("train" if method != BASE else "stage", parts[2], method, train_seed=ts)
    if len(parts) >= 6 and parts[1] == "eval":
        ts = _seed(parts[4], TRAIN_SEED_PREFIX)
        rest = parts[5:] if ts is not None else parts[4:]
        task = rest[0] if rest else None
        seed = _seed(rest[1], EVAL_SEED_PREFIX) if len(rest) > 1 else None
        return CellRef("eval", student_of_group(parts[2]), parts[3], task, seed, ts)
    return CellRef("stage", None, None)


# ------------------------------------------------------------------------------------------------
# the run folder


class RunLayout:
    """Paths inside one run folder (and its stage cache)."""

    def __init__(self, out: Path | str, cache: Path | str | None = None):
        self.out = Path(out)
        self.cache = Path(cache) if cache else self.out / "cache"

    # run-level files
    @property
    def config(self) -> Path:
        return self.out / "config.json"

    @property
    def run_info(self) -> Path:
        return self.out / "run_info.json"

    @property
    def cells(self) -> Path:
        return self.out / "cells"

    @property
    def summary_marker(self) -> Path:
        return self.out / ".summarized"

    @property
    def merge_record(self) -> Path:
        """Written only in a merged run: the source runs and which one each cell came from."""
        return self.out / "merged_from.json"

    @property
    def exports(self) -> Path:
        return self.out / "exports"

    def merge_sources(self) -> dict[str, str]:
        """Cell path (relative to the run folder) -> label of the run it came from; {} if not merged."""
        if not self.merge_record.exists():
            return {}
        return dict(read_json(self.merge_record).get("cells", {}))

    # stages
    def stage(self, kind: str, key: str) -> Path:
        return self.cache / f"{kind}-{key}"

    def stage_partial(self, kind: str, key: str) -> Path:
        return self.cache / f".{kind}-{key}.partial"

    @staticmethod
    def stage_spec_of(model_dir: Path | str) -> dict:
        """The spec a cached stage was built from, given the model folder inside it ({} if none)."""
        rec = Path(model_dir).parent / "stage.json"
        return dict(read_json(rec).get("spec") or {}) if rec.exists() else {}

    def stages_of(self, kind: str) -> Iterator[Path]:
        """Finished stages of one kind (e.g. student-base), for readers such as the parameter count."""
        for done in sorted(self.cache.glob(f"{kind}-*/DONE")):
            yield done.parent

    # cells
    def train_cell(self, student: str, method: str, train_seed: int | None = None, point: str | None = None) -> Path:
        d = self.cells / "train" / label_of(student) / method
        if point is not None:  # a tuning grid point (kdbench.tuning)
            d = d / f"{TUNE_PREFIX}{point}"
        return d / f"{TRAIN_SEED_PREFIX}{train_seed}" if train_seed is not None else d

    def tuning(self, student: str, method: str) -> Path:
        """The tuning record of one (student, method): grid, dev scores, selected point."""
        return self.cells / "train" / label_of(student) / method / "tuning.json"

    def tuning_files(self) -> list[Path]:
        return sorted((self.cells / "train").glob("*/*/tuning.json"))

    def tuning_records(self) -> list[dict]:
        return [read_json(p) for p in self.tuning_files()]

    def teacher_failure(self) -> Path:
        return self.cells / "train" / TEACHER_GROUP

    def base_failure(self, student: str) -> Path:
        return self.cells / "train" / label_of(student) / BASE_FOLDER

    def eval_cell(self, group: str, model: str, task: str, seed: int, train_seed: int | None = None) -> Path:
        d = self.cells / "eval" / group / model
        if train_seed is not None:
            d = d / f"{TRAIN_SEED_PREFIX}{train_seed}"
        return d / task / f"{EVAL_SEED_PREFIX}{seed}"

    # readers
    def eval_records(self) -> list[EvalRecord]:
        """metrics.json of every finished eval cell (an unfinished cell is neither result nor failure)."""
        out = []
        for pattern in ("*/*/*/seed*/metrics.json", f"*/*/{TRAIN_SEED_PREFIX}*/*/seed*/metrics.json"):
            for p in sorted((self.cells / "eval").glob(pattern)):
                if (p.parent / "DONE").exists():
                    out.append(read_json(p))
        return out

    def eval_cell_of(self, rec: EvalRecord) -> Path:
        return self.eval_cell(rec["group"], rec["model"], rec["task"], rec["seed"], rec.get("train_seed"))

    def failures(self) -> list[dict]:
        """error.json of every failed cell, with its relative 'path' and parsed 'where'."""
        out = []
        for p in sorted(self.cells.glob("**/error.json")):
            e = read_json(p)
            e.pop("traceback", None)
            e["path"] = p.parent.relative_to(self.out).as_posix()
            ref = parse_cell(e["path"])
            method = ref.method if ref.method is not None else e.get("name")
            seed = e.get("seed", ref.seed)
            e["where"] = {"student": ref.student, "method": method, "task": ref.task, "seed": seed,
                          "train_seed": ref.train_seed}
            out.append(e)
        return out

    def cell_folders(self) -> Iterator[Path]:
        """Every finished or failed cell folder (DONE or error.json), for copying runs into a merge."""
        found = {m.parent for name in ("DONE", "error.json") for m in self.cells.glob(f"**/{name}") if m.is_file()}
        yield from sorted(found)

    def cell_files(self, cell: Path) -> list[Path]:
        """The record files of a cell (not its model/ folder, checkpoints or temp files)."""
        return sorted(p for p in cell.iterdir() if p.is_file() and not p.name.startswith(".")
                      and not p.name.startswith("checkpoint"))

    def train_cells(self) -> Iterator[tuple[str, str, Optional[int], Path]]:
        """(student label, method, training seed, folder) of every train cell folder with files in it."""
        root = self.cells / "train"
        for d in sorted(p for p in root.glob("*/*") if p.is_dir()):
            if d.parent.name == TEACHER_GROUP or d.name.startswith("_"):
                continue
            student, method = d.parent.name, d.name
            tuned = self.tuning(student, method)
            if tuned.exists():  # tuned: the selected point's cells stand for the method
                d = d / f"{TUNE_PREFIX}{read_json(tuned)['selected']}"
            seeds = sorted((p for p in d.glob(f"{TRAIN_SEED_PREFIX}*") if p.is_dir()),
                           key=lambda p: _seed(p.name, TRAIN_SEED_PREFIX) or 0)
            if seeds:
                for s in seeds:
                    yield student, method, _seed(s.name, TRAIN_SEED_PREFIX), s
            else:
                yield student, method, None, d
