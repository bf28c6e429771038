"""End to end: the `ci` preset runs every stage into a temporary folder; a rerun reuses the work."""
import json
import time

import pytest

from kdbench.cli import main


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ci")
    t0 = time.time()
    code = main(["--preset", "ci", "--out", str(out), "--no-progress"])
    return out, code, time.time() - t0


def test_ci_preset_writes_the_leaderboard(ci_run):
    out, code, _ = ci_run
    assert code == 0
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "config.json", "run.log"):
        assert (out / name).exists(), name
    assert list((out / "plots").glob("*.png"))
    rows = json.loads((out / "leaderboard.json").read_text())
    for row in rows:
        assert {"method", "task", "metric", "mean", "std", "n_seeds"} <= set(row)
    have = {(r["method"], r["task"], r["metric"]) for r in rows}
    for method in ("teacher", "student-base", "sft", "kd"):
        for metric in ("rouge_l", "validity"):
            assert (method, "toy", metric) in have, (method, metric)
    assert all(r["n_seeds"] == 2 for r in rows)
    # every trained cell froze its config; every eval cell kept its generations
    assert (out / "cells" / "train" / "gpt2-toy-xs" / "kd" / "config.json").exists()
    gens = list((out / "cells" / "eval").glob("*/*/toy/seed10/generations.jsonl"))
    assert len(gens) == 4


def test_ci_preset_values_make_sense(ci_run):
    """Values, not just files: the SFT teacher is better than the untrained student on the toy
    world, and every distilled student has learnt from its data (LM loss below the student base)."""
    out, code, _ = ci_run
    assert code == 0
    rows = json.loads((out / "leaderboard.json").read_text())
    mean = {(r["method"], r["metric"]): r["mean"] for r in rows if r["task"] == "toy"}
    for metric in ("rouge_l", "validity"):
        assert mean[("teacher", metric)] > mean[("student-base", metric)] + 5, metric
    assert mean[("teacher", "lm_loss")] < mean[("student-base", "lm_loss")]
    for method in ("sft", "kd"):
        assert mean[(method, "lm_loss")] < mean[("student-base", "lm_loss")] - 0.05, method


def test_rerun_reuses_every_cell(ci_run):
    out, _, first = ci_run
    before = json.loads((out / "leaderboard.json").read_text())
    t0 = time.time()
    assert main(["--preset", "ci", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "leaderboard.json").read_text()) == before
    log = (out / "run.log").read_text()
    assert "stage teacher-base: cached" in log and "train gpt2-toy-xs/kd: done, skipping" in log


def test_summarize_rebuilds_the_same_leaderboard(ci_run, capsys):
    out, _, _ = ci_run
    before = (out / "leaderboard.json").read_text()
    assert main(["summarize", str(out)]) == 0
    assert (out / "leaderboard.json").read_text() == before
    assert "| teacher |" in capsys.readouterr().out
