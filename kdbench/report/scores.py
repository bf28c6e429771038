"""Per-example scores of a run, shaped for the statistics layer (kdbench.stats).

One frame per (task, value name): rows (model, train_seed, eval_seed, example_id, value columns),
and the `Statistic` that turns a subset of rows into the value the leaderboard shows:
- per-example "mean" metrics: `MeanOf(value)` over the per_example.jsonl field of that name;
- "recompute" metrics (ECE, ...): `Custom(metric.recompute)` over the raw per-example fields;
- "none" metrics, or cells written before per-example scores existed: the cell's own value as one
  pseudo-example per evaluation seed (`example_id` = "eval<seed>"), so the bootstrap resamples
  training seeds and evaluation seeds but not prompts (recorded as `level: "cell"`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..io import read_jsonl
from ..layout import RunLayout, student_of_group
from ..stats import Custom, MeanOf, Statistic
from .data import Run, _metric_registry


def model_key(student: str | None, method: str) -> str:
    """The statistics layer's row key: '<student>/<method>', or the bare name for the teacher."""
    return method if student is None else f"{student}/{method}"


@dataclass
class Column:
    """Everything needed to put a CI on one (task, value) column."""

    task: str
    value: str
    frame: pd.DataFrame
    statistic: Statistic
    higher_is_better: bool
    level: str  # "example" (prompts resampled) or "cell" (one value per eval cell)


def _none(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _recompute(metric, value: str, columns: tuple[str, ...]) -> Custom:
    """The metric's own recompute over the resampled rows' raw fields (arrays in, rows rebuilt)."""
    def fn(arrays: dict) -> float:
        # arrays: {field: array}, or the resampled rows' DataFrame; only the metric's fields matter
        return float(metric.recompute_columns({c: arrays[c] for c in columns if c in arrays}).get(value, math.nan))

    return Custom(fn, name=value, columns=columns)


def load_columns(run: Run) -> dict[tuple[str, str], Column]:
    """(task, value name) -> Column, for every column of the leaderboard."""
    from ..metrics.base import METRICS

    meta = _metric_registry()
    layout = RunLayout(run.out)
    per_ex: dict[tuple[str, str], list[pd.DataFrame]] = {}  # (task, metric) -> frames
    cell_rows: dict[tuple[str, str], list[dict]] = {}  # (task, value) -> cell-level rows
    for rec in run.records:
        student = student_of_group(rec["group"])
        ident = {"model": model_key(student, rec["model"]), "train_seed": int(rec.get("train_seed") or 0),
                 "eval_seed": int(rec["seed"])}
        path = layout.eval_cell_of(rec) / "per_example.jsonl"
        rows = read_jsonl(path) if path.exists() else None
        done_metrics = set()
        if rows:
            df = pd.DataFrame(rows).rename(columns={"id": "example_id"})
            df["example_id"] = df["example_id"].astype(str)
            for k, v in ident.items():
                df[k] = v
            for metric_name in {meta.get(v, (v,))[0] for v in rec.get("metrics", {})}:
                if metric_name in METRICS and METRICS.get(metric_name).per_example in ("mean", "recompute"):
                    per_ex.setdefault((rec["task"], metric_name), []).append(df)
                    done_metrics.add(metric_name)
        for value, v in rec.get("metrics", {}).items():
            if meta.get(value, (value,))[0] in done_metrics or v is None:
                continue
            cell_rows.setdefault((rec["task"], value), []).append(
                {**ident, "train_seed": ident["train_seed"], "eval_seed": 0, "example_id": f"eval{rec['seed']}",
                 value: float(v)})
    out: dict[tuple[str, str], Column] = {}
    for (task, value) in run.columns:
        parent, _, hib = meta.get(value, (value, None, True))
        frames = per_ex.get((task, parent))
        if frames is not None:
            metric = METRICS.get(parent)
            frame = pd.concat(frames, ignore_index=True)
            if metric.per_example == "mean" and value in frame.columns:
                stat: Statistic = MeanOf(value)
            elif metric.per_example == "recompute":
                # its raw fields are prefixed with its name (ece.confidence, lm_loss.nll, ...)
                fields = tuple(c for c in frame.columns if c.startswith(f"{parent}.") or c == value)
                stat = _recompute(metric, value, fields)
            else:
                frames = None
        if frames is not None:
            out[(task, value)] = Column(task, value, frame, stat, hib, "example")
        elif (task, value) in cell_rows:
            out[(task, value)] = Column(task, value, pd.DataFrame(cell_rows[(task, value)]), MeanOf(value), hib, "cell")
    return out


def frames_by_model(col: Column) -> dict[str, pd.DataFrame]:
    return {m: g for m, g in col.frame.groupby("model", sort=False)}


def generations_path(run: Run, rec: dict) -> Path:
    return RunLayout(run.out).eval_cell_of(rec) / "generations.jsonl"
