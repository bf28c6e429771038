"""A pruned student (`--student prune:drop=1-1`) has its rows and plots in the report.

Its cells live under the label `prune_drop=1-1` (kdbench.layout.label_of turns ':' into '_'); a report
that derived labels on its own (without the ':' rule) never matched them to the configured student,
so the student lost its place in the order. The run folder here is fake (no training): the eval cells
are written the way kdbench.cells.Cells.eval_cell writes them, at the paths kdbench.layout names.
"""
from __future__ import annotations

import json
from pathlib import Path

from kdbench.layout import BASE, TEACHER, TEACHER_GROUP, RunLayout, group_of, label_of, mark_done
from kdbench.report import load_run, summarize

PRUNED = "prune:drop=1-1"
OTHER = "gpt2"  # sorts before the pruned label: config order, not the alphabet, must put it second
SEEDS = (10, 20)
# (row, score): the teacher best, the students' base worst
SCORES = {TEACHER: 90.0, BASE: 10.0, "sft": 50.0}


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _eval_cell(layout: RunLayout, student: str | None, model: str, seed: int, score: float) -> None:
    """metrics.json + DONE of one eval cell, in Cells.eval_cell's record shape."""
    group = group_of(student)
    cell = layout.eval_cell(group, model, "toy", seed)
    rec = {"group": group, "model": model, "task": "toy", "seed": seed,
           "metrics": {"validity": score + seed / 10, "rouge_l": score / 2 + seed / 10},
           "n_examples": 20, "task_version": 1, "metric_versions": {"validity": 1, "rouge_l": 1},
           "artifacts": {}, "wall_time_s": 0.1}
    _write(cell / "metrics.json", rec)
    (cell / "generations.jsonl").write_text(
        "".join(json.dumps({"id": f"ex{i}", "prompt": "p", "prediction": "a b c", "references": ["a b c"]}) + "\n"
                for i in range(3)), encoding="utf-8")
    mark_done(cell, {"key": f"{group}-{model}-{seed}"})


def _fake_run(out: Path, students: list[str]) -> RunLayout:
    layout = RunLayout(out)
    _write(layout.config, {"students": students, "methods": ["sft"], "tasks": ["toy"], "teacher": "tiny-teacher"})
    for seed in SEEDS:
        _eval_cell(layout, None, TEACHER, seed, SCORES[TEACHER])
        for i, student in enumerate(students):
            for model in (BASE, "sft"):
                _eval_cell(layout, student, model, seed, SCORES[model] + i)
    return layout


def test_pruned_label_is_the_layouts():
    assert label_of(PRUNED) == "prune_drop=1-1"


def test_pruned_student_rows_follow_the_teacher(tmp_path):
    _fake_run(tmp_path, [PRUNED])
    run = load_run(tmp_path)
    label = label_of(PRUNED)
    assert run.students == [label]
    assert run.keys == [(None, TEACHER), (label, BASE), (label, "sft")]
    rows = {(r["student"], r["method"], r["metric"]): r for r in run.rows}
    assert rows[(label, "sft", "validity")]["mean"] == 51.5 and rows[(label, "sft", "validity")]["n_seeds"] == 2
    assert rows[(None, TEACHER, "validity")]["mean"] == 91.5
    # the layout's eval cell of every record is where the fake run put it
    assert all((RunLayout(tmp_path).eval_cell_of(r) / "DONE").exists() for r in run.records)


def test_pruned_student_keeps_its_configured_place(tmp_path):
    """Config order: the pruned student first, although its label sorts after the other's."""
    _fake_run(tmp_path, [PRUNED, OTHER])
    run = load_run(tmp_path)
    label = label_of(PRUNED)
    assert run.students == [label, OTHER]
    assert run.keys[0] == (None, TEACHER)
    assert run.keys[1:3] == [(label, BASE), (label, "sft")]


def test_summarize_reports_the_pruned_student(tmp_path):
    _fake_run(tmp_path, [PRUNED])
    rows = summarize(tmp_path, quiet=True)
    label = label_of(PRUNED)
    assert {(r["student"], r["method"]) for r in rows} == {(None, TEACHER), (label, BASE), (label, "sft")}
    md = (tmp_path / "leaderboard.md").read_text(encoding="utf-8")
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    row_of = {m: next((ln for ln in lines if f"| {m} " in ln or f"|{m}|" in ln.replace(" ", "")), None)
              for m in (TEACHER, BASE, "sft")}
    assert all(row_of.values()), md
    assert label in row_of[BASE] and label in row_of["sft"], md
    assert lines.index(row_of[TEACHER]) < lines.index(row_of[BASE]) < lines.index(row_of["sft"])
    assert "51.5" in row_of["sft"], md  # the pruned student's sft validity, not an empty cell
    saved = json.loads((tmp_path / "leaderboard.json").read_text(encoding="utf-8"))
    assert any(r["student"] == label and r["method"] == "sft" for r in saved)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "prune" in html
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert plots, "no plots for the pruned student's rows"
