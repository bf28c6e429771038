"""Merged runs (`summarize A B --out M`), from synthetic cells: conflicts, duplicates, provenance.

The end-to-end check that a merge of two halves of a real run gives the run's own leaderboard is in
tests/e2e/test_e2e.py (it reuses the ci run there).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.errors import ConfigError
from kdbench.merge import merge_runs
from kdbench.report import load_run, summarize
from test_report import make_run

KD_CELL = "cells/eval/gpt2-toy-s/kd/toy/seed10"


def _halves(tmp: Path) -> tuple[Path, Path, Path]:
    """A whole synthetic run and two runs holding its sft / kd halves (teacher and bases in both)."""
    whole = make_run(tmp / "whole", methods=("sft", "kd"), tasks=("toy",), artifacts=False)
    a, b = make_run(tmp / "A", methods=("sft",), tasks=("toy",), artifacts=False), \
        make_run(tmp / "B", methods=("kd",), tasks=("toy",), artifacts=False)
    return whole, a, b


def _rows(folder: Path) -> list[dict]:
    return json.loads((folder / "leaderboard.json").read_text())


@pytest.fixture
def no_plots(monkeypatch):
    """Plots are not what these tests check, and rendering them is most of summarize's time."""
    monkeypatch.setattr("kdbench.report.plots.make_plots", lambda run, folder: ([], []))


def test_merge_of_halves_equals_the_whole_and_says_where_rows_came_from(tmp_path, no_plots):
    whole, a, b = _halves(tmp_path)
    summarize(whole, quiet=True)
    assert main(["summarize", str(a), str(b), "--out", str(tmp_path / "M")]) == 0
    m = tmp_path / "M"
    merged = _rows(m)
    runs = {(r["student"], r["method"]): r.pop("runs") for r in merged}
    assert merged == _rows(whole)  # values, CIs, seed counts and display order
    assert json.loads((m / "comparisons.json").read_text()) == json.loads((whole / "comparisons.json").read_text())
    # provenance: shared rows from the first run that has them, each half's method from its run
    assert runs[(None, "teacher")] == ["A"] and runs[("gpt2-toy-s", "sft")] == ["A"]
    assert runs[("gpt2-toy-s", "kd")] == ["B"]
    rec = json.loads((m / "merged_from.json").read_text())
    assert [s["label"] for s in rec["sources"]] == ["A", "B"]
    assert rec["duplicates"]["cells/eval/_teacher/teacher/toy/seed10"] == ["B"]  # in both, used once
    assert json.loads((m / "config.json").read_text())["methods"] == ["sft", "kd"]  # united, A's order first
    md = (m / "leaderboard.md").read_text()
    assert "## Sources (merged run)" in md and "| gpt2-toy-s | kd | toy | B |" in md
    html = (m / "report.html").read_text()
    assert 'id="sources"' in html and str(b.resolve()) in html
    assert not (whole / "merged_from.json").exists() and "Sources" not in (whole / "leaderboard.md").read_text()


def test_conflicting_cell_is_an_error_naming_both_folders(tmp_path):
    _, a, b = _halves(tmp_path)
    cell = b / "cells/eval/_teacher/teacher/toy/seed20"
    (cell / "DONE").write_text(json.dumps({"key": "other"}))
    (cell / "config.json").write_text(json.dumps({"eval": {"temperature": 0.7}, "seed": 20}))
    (a / "cells/eval/_teacher/teacher/toy/seed20/config.json").write_text(
        json.dumps({"eval": {"temperature": 1.0}, "seed": 20}))
    with pytest.raises(ConfigError) as e:
        merge_runs([a, b], tmp_path / "M")
    msg = str(e.value)
    assert "cells/eval/_teacher/teacher/toy/seed20" in msg and "eval.temperature" in msg
    assert str(a / "cells/eval/_teacher/teacher/toy/seed20") in msg and str(cell) in msg
    assert "run 'A'" in msg and "run 'B'" in msg
    assert not (tmp_path / "M" / "merged_from.json").exists()  # nothing half-merged is left
    # and through the CLI: exit 2 with the message
    assert main(["summarize", str(a), str(b), "--out", str(tmp_path / "M")]) == 2


def test_a_cell_finished_in_one_run_beats_its_failure_in_another(tmp_path):
    _, a, b = _halves(tmp_path)
    failed = a / "cells/eval/_teacher/teacher/toy/seed30"
    shutil.rmtree(failed)
    failed.mkdir()
    (failed / "error.json").write_text(json.dumps({"kind": "eval", "name": "teacher", "error": "OSError: disk"}))
    rec = merge_runs([a, b], tmp_path / "M")
    assert rec["cells"]["cells/eval/_teacher/teacher/toy/seed30"] == "B"
    rows = load_run(tmp_path / "M").rows
    teacher = [r for r in rows if r["method"] == "teacher" and r["metric"] == "validity"][0]
    assert teacher["n_seeds"] == 3 and teacher["n_failed_seeds"] == 0 and teacher["runs"] == ["A", "B"]


def test_merge_output_rules(tmp_path, capsys):
    _, a, b = _halves(tmp_path)
    assert main(["summarize", str(a), str(b)]) == 2  # two runs need --out
    assert "--out" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="also a source"):
        merge_runs([a, b], a)
    with pytest.raises(ConfigError, match="holds a benchmark run's cells"):
        merge_runs([a], b)  # never overwrite a real run folder
    with pytest.raises(ConfigError, match="no cells/ folder"):
        merge_runs([a, tmp_path / "nothing"], tmp_path / "M")
    # an earlier merge output is rebuilt from its sources: a dropped source's cells disappear
    merge_runs([a, b], tmp_path / "M")
    assert (tmp_path / "M" / KD_CELL).exists()
    merge_runs([a], tmp_path / "M")
    assert not (tmp_path / "M" / KD_CELL).exists()
    # two sources with one folder name get distinct labels
    c = tmp_path / "other" / "A"
    shutil.copytree(b, c)
    assert [s["label"] for s in merge_runs([a, c], tmp_path / "M2")["sources"]] == ["A#1", "A#2"]
