"""The verdict layer end to end on a fake run folder with per-example scores: CIs on every row,
comparisons.json, significance-aware bold, findings that follow the data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kdbench.io import atomic_write_json, atomic_write_jsonl, mark_done
from kdbench.layout import TEACHER_GROUP, RunLayout
from kdbench.report import load_run, summarize

STUDENT = "gpt2-toy-s"
N_PROMPTS = 200


def _write_run(out: Path, p_valid: dict[str, float], train_seeds=(1, 2), eval_seeds=(10, 20)) -> Path:
    """Validity per example ~ Bernoulli(p_valid[method]) for each (training seed, eval seed)."""
    layout = RunLayout(out)
    atomic_write_json(layout.config, {"students": [STUDENT], "methods": [m for m in p_valid if m != "teacher"],
                                      "tasks": ["toy"], "preset": "test"})
    rng = np.random.default_rng(0)
    for method, p in p_valid.items():
        group, seeds = (TEACHER_GROUP, [None]) if method == "teacher" else (STUDENT, list(train_seeds))
        for ts in seeds:
            for es in eval_seeds:
                cell = layout.eval_cell(group, method, "toy", es, ts)
                vals = (rng.random(N_PROMPTS) < p).astype(float) * 100
                atomic_write_jsonl(cell / "per_example.jsonl",
                                   [{"id": f"toy-{i}", "validity": float(v)} for i, v in enumerate(vals)])
                atomic_write_jsonl(cell / "generations.jsonl", [])
                rec = {"group": group, "model": method, "task": "toy", "seed": es, "metrics":
                       {"validity": float(vals.mean())}, "n_examples": N_PROMPTS, "task_version": 1,
                       "metric_versions": {"validity": 1}, "artifacts": {}}
                if ts is not None:
                    rec["train_seed"] = ts
                atomic_write_json(cell / "metrics.json", rec)
                mark_done(cell, {"key": "k"})
    return out


def test_rows_get_cis_and_comparisons_follow_the_data(tmp_path):
    out = _write_run(tmp_path / "run", {"teacher": 0.9, "sft": 0.5, "kd": 0.52, "minillm": 0.8})
    summarize(out, quiet=True)
    rows = {r["method"]: r for r in json.loads((out / "leaderboard.json").read_text())}
    for m in ("sft", "kd", "minillm"):
        r = rows[m]
        assert r["ci_low"] < r["mean"] < r["ci_high"]
        assert (r["n_train_seeds"], r["n_eval_seeds"], r["n_prompts"]) == (2, 2, N_PROMPTS)
    assert rows["teacher"]["n_train_seeds"] == 1
    comps = json.loads((out / "comparisons.json").read_text())
    by = {(c["method"], c["baseline"]): c for c in comps}
    big, small = by[("minillm", "sft")], by[("kd", "sft")]
    assert big["significant"] and big["ci_low"] > 0 and abs(big["delta"] - 30) < 6
    assert not small["significant"] and small["ci_low"] < 0 < small["ci_high"]
    assert {"p_value", "p_adjusted", "task", "metric"} <= set(big) and big["p_adjusted"] >= big["p_value"]
    md = (out / "leaderboard.md").read_text()
    line = next(ln for ln in md.splitlines() if "| minillm |" in ln)
    assert "**" in line  # the significantly best is bold ...
    assert "**" not in next(ln for ln in md.splitlines() if "| kd |" in ln)  # ... and the others are not


def test_ties_share_the_bold_and_findings_flip_with_the_data(tmp_path):
    tie = _write_run(tmp_path / "tie", {"teacher": 0.9, "sft": 0.5, "kd": 0.6, "minillm": 0.6})
    run = load_run(tie)
    summarize(tie, quiet=True)
    md = (tie / "leaderboard.md").read_text()
    assert "**" in next(ln for ln in md.splitlines() if "| kd |" in ln)
    assert "**" in next(ln for ln in md.splitlines() if "| minillm |" in ln)
    assert run.students == [STUDENT]

    def c2(folder):
        f = json.loads((folder / "findings.json").read_text())["claims"]
        ev = next(x for x in f if x["id"] == "C2")["evidence"]
        return next(e for e in ev if "minillm" in e["requirement"] and "validity" in e["requirement"])["status"]

    up = _write_run(tmp_path / "up", {"teacher": 0.9, "sft": 0.5, "kd": 0.4, "minillm": 0.8})
    down = _write_run(tmp_path / "down", {"teacher": 0.9, "sft": 0.5, "kd": 0.8, "minillm": 0.4})
    summarize(up, quiet=True)
    summarize(down, quiet=True)
    assert c2(up) == "supported" and c2(down) == "contradicted" and c2(tie) == "inconclusive"


def test_findings_name_the_metrics_that_cannot_tell_students_apart(tmp_path):
    """A saturated metric (every student within 0.5 of its ceiling) and one at chance for everyone
    are reported with their numbers; a metric that separates the students is not."""
    out = _write_run(tmp_path / "run", {"teacher": 0.9, "sft": 0.5, "kd": 0.7, "minillm": 0.8})
    layout = RunLayout(out)
    rng = np.random.default_rng(1)
    for cell in layout.out.glob("cells/eval/*/*/**/toy/seed*"):
        rec = json.loads((cell / "metrics.json").read_text())
        rows = [json.loads(x) for x in (cell / "per_example.jsonl").read_text().splitlines()]
        for r in rows:
            r["dist4"] = 100.0 if rng.random() < 0.999 else 0.0  # ~99.9 for everyone
            r["ece.correct"] = float(rng.random() < 0.5)  # a coin for everyone (recomputed metric)
            r["ece.confidence"] = float(rng.uniform(0.5, 1.0))
        atomic_write_jsonl(cell / "per_example.jsonl", rows)
        rec["metrics"].update(dist4=float(np.mean([r["dist4"] for r in rows])),
                              cls_acc=100.0 * float(np.mean([r["ece.correct"] for r in rows])), ece=0.3)
        rec["metric_versions"].update(dist4=1, ece=1)
        atomic_write_json(cell / "metrics.json", rec)
    summarize(out, quiet=True)
    text = (out / "findings.md").read_text()
    health = text[text.index("cannot tell the students apart"):]
    dist4 = next(ln for ln in health.splitlines() if "| dist4 |" in ln)
    assert "saturated" in dist4 and "ceiling 100" in dist4
    assert "contains chance (50)" in next(ln for ln in health.splitlines() if "| cls_acc |" in ln)
    assert "| validity |" not in health
