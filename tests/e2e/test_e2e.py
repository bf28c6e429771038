"""End to end: the `ci` preset runs every stage into a temporary folder; a rerun reuses the work."""
import json
import shutil
import time
from pathlib import Path

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


def test_every_saved_student_has_a_model_card(ci_run):
    """summarize wrote a Hugging Face card into each trained student's folder; the Hub's parser reads it."""
    from huggingface_hub import ModelCard

    import kdbench
    from kdbench.layout import RunLayout

    out, _, _ = ci_run
    rows = json.loads((out / "leaderboard.json").read_text())
    cells = list(RunLayout(out).train_cells())
    assert {m for _, m, _, _ in cells} == {"sft", "kd"}
    for student, method, _, cell in cells:
        folder = Path(json.loads((cell / "result.json").read_text())["model_path"])
        card = ModelCard.load(folder / "README.md")
        assert card.data.library_name == "transformers" and method in card.data.tags
        mine = {(r["task"], r["metric"]): r for r in rows if (r["student"], r["method"]) == (student, method)}
        got = {(e.dataset_type, e.metric_type): e for e in card.data.eval_results}
        assert set(got) == set(mine)  # every leaderboard row of this student, no other
        for k, e in got.items():
            assert e.metric_value == mine[k]["mean"]
            if mine[k]["ci_low"] is not None:
                assert f"95% CI [{mine[k]['ci_low']:.4g}, {mine[k]['ci_high']:.4g}]" in e.metric_config
        text = card.text
        assert "| base model | `gpt2-toy-xs` |" in text
        assert ("| teacher | `gpt2-toy-s` |" if method == "kd" else "| teacher | none") in text
        assert "30 steps x batch 16, lr 0.003" in text and "task `toy` v2, train split" in text
        assert f"| kdbench | {kdbench.__version__}, commit " in text and "not available" not in text
        frozen = json.loads((cell / "config.json").read_text())
        if method == "kd":  # the method config shown is the cell's frozen one
            block = text.split("Method config:")[1].split("```json")[1].split("```")[0]
            assert json.loads(block) == frozen["method_config"]
        assert f"hf upload <your-user>/<model-name> {folder}" in text


def _half(src: Path, dest: Path, methods: list[str], drop: list[str]) -> Path:
    """A run folder holding part of `src`'s cells, as if it had been run separately."""
    shutil.copytree(src / "cells", dest / "cells", ignore=shutil.ignore_patterns("model"))
    for rel in drop:
        shutil.rmtree(dest / rel)
    cfg = json.loads((src / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**cfg, "methods": methods}))
    return dest


def test_merged_halves_give_the_single_runs_leaderboard(ci_run, tmp_path, monkeypatch):
    """Teacher and student-base cells are in both halves (used once); kd's eval seeds are split."""
    out, _, _ = ci_run
    monkeypatch.setattr("kdbench.report.plots.make_plots", lambda run, folder: ([], []))
    kd = "cells/eval/gpt2-toy-xs/kd/toy"
    a = _half(out, tmp_path / "A", ["sft", "kd"], ["cells/train/gpt2-toy-xs/kd", f"{kd}/seed20"])
    b = _half(out, tmp_path / "B", ["kd"], ["cells/train/gpt2-toy-xs/sft", "cells/eval/gpt2-toy-xs/sft",
                                            f"{kd}/seed10"])
    m = tmp_path / "M"
    assert main(["summarize", str(a), str(b), "--out", str(m)]) == 0
    merged = json.loads((m / "leaderboard.json").read_text())
    runs = {(r["method"], r["metric"]): r.pop("runs") for r in merged}
    assert merged == json.loads((out / "leaderboard.json").read_text())
    assert json.loads((m / "comparisons.json").read_text()) == json.loads((out / "comparisons.json").read_text())
    assert runs[("kd", "rouge_l")] == ["A", "B"] and runs[("sft", "rouge_l")] == ["A"]
    assert (m / "report.html").exists() and not list(m.rglob("README.md"))  # cards stay with the models
    # the same cell trained differently in the other half: refused, naming both
    cfg = b / "cells/eval/_teacher/teacher/toy/seed10"
    (cfg / "DONE").write_text(json.dumps({"key": "retrained"}))
    assert main(["summarize", str(a), str(b), "--out", str(tmp_path / "M2")]) == 2


def test_per_example_export_reproduces_cis_and_comparisons(ci_run):
    """Per-prompt scores from exports/per_example.csv alone give the leaderboard's CIs and p-values."""
    import pandas as pd

    from kdbench.report.verdicts import N_RESAMPLES
    from kdbench.stats import MeanOf, model_ci, paired_comparison

    out, _, _ = ci_run
    df = pd.read_csv(out / "exports" / "per_example.csv", dtype={"example_id": str})
    rows = json.loads((out / "leaderboard.json").read_text())
    r = next(x for x in rows if (x["method"], x["metric"]) == ("kd", "rouge_l"))
    col = df[(df.task == "toy") & (df.metric == "rouge_l") & (df.level == "example")]
    kd, sft = col[col.model == "gpt2-toy-xs/kd"], col[col.model == "gpt2-toy-xs/sft"]
    assert kd.example_id.nunique() == r["n_prompts"] == 42
    ci = model_ci(kd, MeanOf("value"), n_resamples=N_RESAMPLES)
    assert (float(f"{ci['ci_low']:.6g}"), float(f"{ci['ci_high']:.6g}")) == (r["ci_low"], r["ci_high"])
    comp = next(c for c in json.loads((out / "comparisons.json").read_text())
                if (c["method"], c["baseline"], c["metric"]) == ("kd", "sft", "rouge_l"))
    p = paired_comparison(kd, sft, MeanOf("value"), n_resamples=N_RESAMPLES)
    assert float(f"{p['delta']:.6g}") == comp["delta"] and float(f"{p['p_value']:.6g}") == comp["p_value"]
    assert float(f"{p['ci_low']:.6g}") == comp["ci_low"]
    lm = json.loads((out / "exports" / "lm_eval" / "gpt2-toy-xs__kd.json").read_text())
    assert lm["results"]["toy"]["rouge_l,none"] == r["mean"]
