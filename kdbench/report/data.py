"""Reading a run folder: eval cells, train cells, failures, and the aggregated leaderboard rows.

Everything the tables, plots and HTML show comes from `load_run(out)`, which reads only what is on
disk, so a partial, resumed or merged benchmark still reports. Values are mean ± std over seeds
(sample std, ddof=1; 0 with one seed) with the seed count.
"""
from __future__ import annotations

import json
import math
import statistics
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import read_json, read_jsonl
from ..layout import BASE, REFERENCE_ROWS, TEACHER, TEACHER_GROUP, RunLayout, label_of, student_of_group  # noqa: F401

Key = tuple  # (student label | None, method)


@dataclass
class Run:
    """Everything summarize needs, read once from a run folder."""

    out: Path
    config: dict
    run_info: dict
    records: list[dict]  # per-seed metrics.json of finished eval cells
    failures: list[dict]  # error.json of every failed cell, with 'path' and parsed 'where'
    rows: list[dict]  # aggregated leaderboard rows, in display order
    keys: list[Key]  # (student, method) rows in display order: teacher, then per student
    columns: list[tuple[str, str]]  # (task, metric) in display order
    train: dict[Key, dict] = field(default_factory=dict)  # (student, method) -> train cell files
    params: dict[str, int] = field(default_factory=dict)  # student label -> parameter count
    verdicts: Any = None  # report.verdicts.Verdicts once computed: CIs, comparisons, bold sets, findings
    sources: list[dict] = field(default_factory=list)  # a merged run's source runs (label, path); else []

    def row(self, key: Key, col: tuple[str, str]) -> dict | None:
        return self._index.get((*key, *col))

    def __post_init__(self) -> None:
        self._index = {(r["student"], r["method"], r["task"], r["metric"]): r for r in self.rows}

    @property
    def students(self) -> list[str]:
        return list(dict.fromkeys(s for s, _ in self.keys if s is not None))

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(m for _, m in self.keys))

    def failed(self, key: Key, col: tuple[str, str] | None = None) -> bool:
        """Whether a failure covers this row (and task): a failed train/stage cell or eval seeds."""
        student, method = key
        for f in self.failures:
            w = f["where"]
            if (w["student"], w["method"]) != (student, method):
                continue
            if w["task"] is None or col is None or w["task"] == col[0]:
                return True
        return False


# ------------------------------------------------------------------------------------------------
# metric metadata


def _metric_registry() -> dict[str, tuple[str, int, bool]]:
    """value name -> (registered metric, version, higher_is_better), sub-values included."""
    from ..metrics.base import METRICS
    from ..plugins import load_plugins

    load_plugins()
    out: dict[str, tuple[str, int, bool]] = {}
    for name in METRICS.names():
        m = METRICS.get(name)
        out.setdefault(name, (name, m.version, m.higher_is_better))
        for sub in m.sub_directions:
            out.setdefault(sub, (name, m.version, m.direction(sub)))
    return out


def _is_judge_metric(name: str) -> bool:
    n = name.lower()
    return "judge" in n or "gpt4" in n


def judge_info(artifacts: dict | None) -> tuple[str | None, int]:
    """(judge label, judge calls) from an eval cell's artifacts, whatever shape the judge left."""
    art = (artifacts or {}).get("judge")
    if isinstance(art, str):
        return art, 0
    if not isinstance(art, dict):
        return None, 0
    label = art.get("judge") or art.get("label") or art.get("model")
    calls = art.get("n_calls", art.get("calls", 0))
    try:
        calls = int(calls or 0)
    except (TypeError, ValueError):
        calls = 0
    return (str(label) if label else None), calls


# ------------------------------------------------------------------------------------------------
# reading cells


def collect(out: Path) -> tuple[list[dict], list[dict]]:
    """(per-seed records, failures) from the cells under `out` (read through kdbench.layout)."""
    layout = RunLayout(out)
    return layout.eval_records(), layout.failures()


def _safetensors_params(model_dir: Path) -> int | None:
    """Parameter count from safetensors headers (no torch, no weights read)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                total += math.prod(meta.get("shape", []))
    return total


def _collect_train(out: Path) -> dict[Key, dict]:
    cells: dict[Key, dict] = {}
    for student, method, _train_seed, d in RunLayout(out).train_cells():
        cell: dict[str, Any] = {"dir": d}
        for name in ("result", "history", "config"):
            p = d / f"{name}.json"
            if p.exists():
                try:
                    cell[name] = read_json(p)
                except (OSError, json.JSONDecodeError):
                    pass
        cell["done"] = (d / "DONE").exists()
        first = cells.setdefault((student, method), cell)  # the first training seed stands for the row
        first.setdefault("runs", []).append(cell)  # every training seed's cell (cost, selection)
    return cells


def _student_params(out: Path, train: dict[Key, dict], config: dict) -> dict[str, int]:
    """Student label -> parameter count, from any of its saved models or its cached base stage."""
    params: dict[str, int] = {}
    for (student, _), cell in sorted(train.items()):
        if student in params:
            continue
        mp = (cell.get("result") or {}).get("model_path")
        if mp and Path(mp).is_dir():
            n = _safetensors_params(Path(mp))
            if n:
                params[student] = n
    # Base stages record their parameter count; the cache may sit inside the run folder.
    for kind in ("student-base", "student-pruned"):
        for stage in RunLayout(out).stages_of(kind):
            try:
                spec = read_json(stage / "stage.json").get("spec", {})
                done = read_json(stage / "DONE")
            except (OSError, json.JSONDecodeError):
                continue
            n = done.get("params")
            label = label_of(str(spec.get("preset") or done.get("preset") or ""))
            if n and label and label not in params:
                params[label] = int(n)
    return params


# ------------------------------------------------------------------------------------------------
# aggregation and order


def _rnd(x: float) -> float:
    return float(f"{x:.6g}")


def aggregate(records: list[dict], failures: list[dict] | None = None) -> list[dict]:
    """Leaderboard rows: one per (student, method, task, metric), mean/std/n over seeds."""
    meta = _metric_registry()
    vals: dict[tuple, dict[int, float]] = {}
    n_examples: dict[tuple, int] = {}
    judges: dict[tuple, str] = {}
    task_versions: dict[str, Any] = {}
    metric_versions: dict[tuple, Any] = {}
    for r in records:
        student = student_of_group(r["group"])
        label, _ = judge_info(r.get("artifacts"))
        for metric, value in r.get("metrics", {}).items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            k = (student, r["model"], r["task"], metric)
            vals.setdefault(k, {})[(r.get("train_seed"), r.get("seed", len(vals.get(k, {}))))] = float(value)
            n_examples[k] = max(n_examples.get(k, 0), int(r.get("n_examples") or 0))
            if label and _is_judge_metric(metric):
                judges[k] = label
            parent = meta.get(metric, (metric, None, True))[0]
            mv = (r.get("metric_versions") or {}).get(parent)
            if mv is not None:
                metric_versions[(r["task"], metric)] = mv
        task_versions[r["task"]] = r.get("task_version")
    failed_seeds: dict[tuple, set] = {}
    for f in failures or []:
        w = f["where"]
        if w["task"] is not None:
            failed_seeds.setdefault((w["student"], w["method"], w["task"]), set()).add(str(w["seed"]))
    rows = []
    for k, by_seed in vals.items():
        student, model, task, metric = k
        v = [by_seed[s] for s in sorted(by_seed, key=str)]
        _, reg_version, hib = meta.get(metric, (metric, None, True))
        mv = metric_versions.get((task, metric), reg_version)
        done = {str(s[1]) for s in by_seed}
        rows.append({
            "student": student, "method": model, "task": task, "metric": metric,
            "mean": _rnd(statistics.fmean(v)), "std": _rnd(statistics.stdev(v)) if len(v) > 1 else 0.0,
            "n_seeds": len(v), "n_failed_seeds": len(failed_seeds.get((student, model, task), set()) - done),
            "n_examples": n_examples[k], "judge": judges.get(k), "higher_is_better": hib,
            "version": {"task": task_versions.get(task), "metric": mv},
            "task_version": task_versions.get(task), "metric_version": mv,
        })
    return rows


def method_order(config: dict, present: list[str]) -> list[str]:
    """Teacher, student-base, registered methods in registration order (kdbench.plugins: the paper's
    order, then new method files), other configured names, the rest sorted."""
    from ..method import METHODS
    from ..plugins import load_plugins

    load_plugins()
    configured = [m for m in config.get("methods", []) if isinstance(m, str)]
    known = [m for m in METHODS.in_registration_order() if m in configured or m in present]
    other = [m for m in configured if m not in known]
    rest = sorted(set(present) - set(known) - set(other) - set(REFERENCE_ROWS))
    return [TEACHER, BASE] + known + other + rest


def row_keys(rows: list[dict], failures: list[dict], train: dict, order: list[str],
             students_cfg: list[str]) -> list[Key]:
    """Display order: the teacher on top, then per student (config order) base + methods."""
    keys = {(r["student"], r["method"]) for r in rows}
    keys |= {(f["where"]["student"], f["where"]["method"]) for f in failures if f["where"]["method"]}
    keys |= set(train)
    keys = {(None, TEACHER) if m == TEACHER else (s, m) for s, m in keys}
    s_rank = {s: i for i, s in enumerate(students_cfg)}
    m_rank = {m: i for i, m in enumerate(order)}

    def rank(k: Key):
        s, m = k
        if m == TEACHER:
            return (0, 0, "", 0, "")
        return (1, s_rank.get(s, len(s_rank)), s or "", m_rank.get(m, len(m_rank)), m)

    return sorted(keys, key=rank)


def columns(rows: list[dict], config: dict) -> list[tuple[str, str]]:
    """(task, metric): tasks in config order, metrics in the order the evaluation reported them."""
    t_rank = {t: i for i, t in enumerate(config.get("tasks", []))}
    first: dict[tuple[str, str], int] = {}
    for i, r in enumerate(rows):
        first.setdefault((r["task"], r["metric"]), i)
    return sorted(first, key=lambda c: (t_rank.get(c[0], len(t_rank)), c[0], first[c]))


def _student_labels(config: dict) -> list[str]:
    return [label_of(s) for s in config.get("students", []) if isinstance(s, str)]


def load_run(out: Path | str) -> Run:
    out = Path(out)
    config = read_json(out / "config.json") if (out / "config.json").exists() else {}
    run_info = read_json(out / "run_info.json") if (out / "run_info.json").exists() else {}
    records, failures = collect(out)
    rows = aggregate(records, failures)
    train = _collect_train(out)
    present = [r["method"] for r in rows] + [m for _, m in train] + [f["where"]["method"] for f in failures
                                                                    if f["where"]["method"]]
    order = method_order(config, present)
    keys = row_keys(rows, failures, train, order, _student_labels(config))
    cols = columns(rows, config)
    k_rank = {k: i for i, k in enumerate(keys)}
    c_rank = {c: i for i, c in enumerate(cols)}
    rows.sort(key=lambda r: (k_rank[(r["student"], r["method"])], c_rank[(r["task"], r["metric"])]))
    sources = _mark_sources(out, records, rows)
    return Run(out=out, config=config, run_info=run_info, records=records, failures=failures, rows=rows,
               keys=keys, columns=cols, train=train, params=_student_params(out, train, config), sources=sources)


def _mark_sources(out: Path, records: list[dict], rows: list[dict]) -> list[dict]:
    """In a merged run (kdbench.merge), give every row the runs its eval cells came from."""
    layout = RunLayout(out)
    cell_source = layout.merge_sources()
    if not cell_source:
        return []
    sources = [{"label": s["label"], "path": s["path"]} for s in read_json(layout.merge_record)["sources"]]
    order = {s["label"]: i for i, s in enumerate(sources)}
    by_row: dict[tuple, set] = {}
    for rec in records:
        rel = layout.eval_cell_of(rec).relative_to(out).as_posix()
        by_row.setdefault((student_of_group(rec["group"]), rec["model"], rec["task"]), set()).add(cell_source.get(rel))
    for r in rows:
        found = by_row.get((r["student"], r["method"], r["task"]), set()) - {None}
        r["runs"] = sorted(found, key=lambda lb: order.get(lb, len(order)))
    return sources


def first_seed_generations(run: Run, task: str) -> tuple[int | None, dict[Key, list[dict]]]:
    """The lowest evaluated seed of `task` and each model's generations for it."""
    seeds = sorted({r["seed"] for r in run.records if r["task"] == task})
    if not seeds:
        return None, {}
    seed = seeds[0]
    gens: dict[Key, list[dict]] = {}
    for r in run.records:
        if r["task"] != task or r["seed"] != seed:
            continue
        p = RunLayout(run.out).eval_cell_of(r) / "generations.jsonl"
        key = (student_of_group(r["group"]), r["model"])
        if p.exists() and key not in gens:  # the first training seed stands for the row
            gens[key] = read_jsonl(p)
    return seed, gens


def records_by_key(run: Run, task: str) -> dict[Key, list[dict]]:
    out: dict[Key, list[dict]] = {}
    for r in run.records:
        if r["task"] == task:
            out.setdefault((student_of_group(r["group"]), r["model"]), []).append(r)
    return out


def tasks(run: Run) -> list[str]:
    return list(dict.fromkeys(t for t, _ in run.columns))
