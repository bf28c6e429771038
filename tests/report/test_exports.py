"""Exports written by summarize: lm-eval-shaped results per model, and the per-example scores CSV
from which anyone can recompute the leaderboard's CIs (synthetic cells; the real-run check of
per-prompt scores and paired comparisons is in tests/e2e/test_e2e.py)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from kdbench.report import summarize
from kdbench.report.exports import Z95, lm_eval_name
from kdbench.report.verdicts import N_RESAMPLES
from kdbench.stats import MeanOf, model_ci
from test_report import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = make_run(tmp_path_factory.mktemp("exports") / "run", methods=("sft", "kd"), tasks=("toy", "sst2"),
                   artifacts=False)
    with pytest.MonkeyPatch.context() as mp:  # plots are not checked here and cost most of summarize
        mp.setattr("kdbench.report.plots.make_plots", lambda run, folder: ([], []))
        summarize(out, quiet=True)
    return out, json.loads((out / "leaderboard.json").read_text())


def test_lm_eval_results_shape_and_values(run):
    out, rows = run
    files = sorted(p.name for p in (out / "exports" / "lm_eval").glob("*.json"))
    keys = sorted({(r["student"], r["method"]) for r in rows}, key=str)
    assert files == sorted(f"{lm_eval_name(s, m)}.json" for s, m in keys)
    doc = json.loads((out / "exports" / "lm_eval" / "gpt2-toy-s__kd.json").read_text())
    for section in ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config"):
        assert "toy" in doc[section] or section == "config", section
    res = doc["results"]["toy"]
    assert res["alias"] == "toy"
    for r in (r for r in rows if (r["student"], r["method"]) == ("gpt2-toy-s", "kd")):
        res = doc["results"][r["task"]]
        assert res[f"{r['metric']},none"] == r["mean"]
        if r["ci_low"] is None:  # no CI (too few seeds): lm-eval's own marker
            assert res[f"{r['metric']}_stderr,none"] == "N/A"
            continue
        assert res[f"{r['metric']}_stderr,none"] == pytest.approx((r["ci_high"] - r["ci_low"]) / (2 * Z95), rel=1e-5)
        assert doc["kdbench"]["ci95"][r["task"]][r["metric"]]["ci_low"] == r["ci_low"]
        assert doc["higher_is_better"][r["task"]][r["metric"]] is r["higher_is_better"]
    assert doc["higher_is_better"]["sst2"]["ece"] is False  # lower is better, as the metric says
    assert doc["versions"]["toy"] == 2 and doc["n-samples"]["toy"]["original"] == 12
    assert doc["model_name"] == "gpt2-toy-s/kd" and doc["model_name_sanitized"] == "gpt2-toy-s__kd"


def test_per_example_csv_reproduces_every_ci(run):
    out, rows = run
    df = pd.read_csv(out / "exports" / "per_example.csv", dtype={"example_id": str})
    assert list(df.columns[:11]) == ["task", "metric", "level", "statistic", "student", "method", "model",
                                     "train_seed", "eval_seed", "example_id", "value"]
    checked = 0
    for r in rows:
        if r["ci_low"] is None:
            continue
        model = r["method"] if r["student"] is None else f"{r['student']}/{r['method']}"
        frame = df[(df.task == r["task"]) & (df.metric == r["metric"]) & (df.model == model)]
        assert (frame.statistic == "mean").all()
        ci = model_ci(frame, MeanOf("value"), n_resamples=N_RESAMPLES)
        assert (float(f"{ci['ci_low']:.6g}"), float(f"{ci['ci_high']:.6g}")) == (r["ci_low"], r["ci_high"]), r
        assert frame["value"].mean() == pytest.approx(r["mean"], rel=1e-5)
        checked += 1
    assert checked >= 20  # the toy rows (sst2 has a model with 2 seeds: too few for a cell-level CI)


def test_exports_are_rebuilt_identically(run, monkeypatch):
    monkeypatch.setattr("kdbench.report.plots.make_plots", lambda run, folder: ([], []))
    out, _ = run
    before = {p.name: p.read_bytes() for p in (out / "exports").rglob("*") if p.is_file()}
    (out / "exports" / "lm_eval" / "stale-model.json").write_text("{}")
    summarize(out, quiet=True)
    after = {p.name: p.read_bytes() for p in (out / "exports").rglob("*") if p.is_file()}
    assert after == before  # the stale file is gone, everything else byte-identical
