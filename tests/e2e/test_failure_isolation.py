"""A failing cell is recorded (error + traceback in its folder), the other cells go on, the
leaderboard marks it failed, and the process exits 1 with a summary.

Two failures are injected into one micro benchmark: a test-only method whose loss turns NaN at
step 3 (a train cell) and a test-only metric that raises for the `kd` student (its eval cell).
"""
from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from kdbench.cli import main
from kdbench.method import METHODS, Method, cross_entropy
from kdbench.metrics.base import METRICS, register_metric
from kdbench.trainer import LossOutput
from micro_run import MICRO

STUDENT = "gpt2-toy-xs"


class NanAtStep3(Method):
    description = "test only: cross-entropy plus a term that is NaN at step 3"

    def train(self, ctx):
        calls = [0]

        def loss_fn(batch):
            calls[0] += 1
            ce = cross_entropy(ctx.logits(ctx.student, batch), batch.labels.to(ctx.device))
            trouble = torch.tensor(float("nan") if calls[0] == 3 else 0.0)
            return LossOutput(ce + trouble, {"ce": ce.item(), "trouble": float(trouble)})

        ctx.fit(loss_fn, ctx.gold_batches())


def boom_on_kd(ctx):
    if ctx.model_label == "kd":
        raise RuntimeError("boom: this metric crashed on purpose")
    return 1.0


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    METHODS.add("nan-at-3", NanAtStep3, NanAtStep3.description)
    register_metric("boom-on-kd", description="test only: raises for the kd student")(boom_on_kd)
    out = tmp_path_factory.mktemp("fail")
    err = io.StringIO()  # capsys is function-scoped; this fixture is per module
    mp = pytest.MonkeyPatch()
    mp.setattr("kdbench.report.plots.make_plots", lambda run, plot_dir: ([], []))  # see micro_run.skip_plots
    try:
        with contextlib.redirect_stderr(err):
            code = main(MICRO + ["--out", str(out), "--methods", "sft,kd,nan-at-3",
                                 "--set", "eval.metrics=[rouge_l,validity,boom-on-kd]"])
    finally:
        mp.undo()
        for reg, name in ((METHODS, "nan-at-3"), (METRICS, "boom-on-kd")):
            reg._items.pop(name, None)
            reg._descriptions.pop(name, None)
    return out, code, err.getvalue()


def test_exit_status_and_summary(failed_run):
    _, code, err = failed_run
    assert code == 1
    assert "2 cell(s) failed:" in err
    assert "train nan-at-3: NonFiniteLossError" in err
    assert "eval kd: RuntimeError: boom: this metric crashed on purpose" in err


def test_nan_is_reported_with_step_and_term_and_traceback(failed_run):
    out, _, _ = failed_run
    rec = json.loads((out / "cells" / "train" / STUDENT / "nan-at-3" / "error.json").read_text())
    assert rec["kind"] == "train" and rec["name"] == "nan-at-3" and rec["student"] == STUDENT
    assert "non-finite loss nan at step 3" in rec["error"]
    assert "non-finite term(s): trouble" in rec["error"] and "ce=" in rec["error"]
    assert "Traceback" in rec["traceback"] and "NonFiniteLossError" in rec["traceback"]
    assert not (out / "cells" / "train" / STUDENT / "nan-at-3" / "DONE").exists()


def test_metric_exception_is_recorded_in_its_eval_cell(failed_run):
    out, _, _ = failed_run
    cell = out / "cells" / "eval" / STUDENT / "kd" / "toy" / "seed10"
    rec = json.loads((cell / "error.json").read_text())
    assert rec["task"] == "toy" and rec["seed"] == 10 and "boom" in rec["error"]
    assert "boom_on_kd" in rec["traceback"]
    assert not (cell / "DONE").exists() and not (cell / "metrics.json").exists()


def test_other_cells_went_on(failed_run):
    out, _, _ = failed_run
    for model in ("sft", "student-base"):
        m = json.loads((out / "cells" / "eval" / STUDENT / model / "toy" / "seed10" / "metrics.json").read_text())
        assert {"rouge_l", "validity", "boom-on-kd"} <= set(m["metrics"])
    assert (out / "cells" / "eval" / "_teacher" / "teacher" / "toy" / "seed10" / "DONE").exists()
    assert (out / "cells" / "train" / STUDENT / "kd" / "DONE").exists()  # kd trained; only its eval failed


def test_leaderboard_marks_the_failures(failed_run):
    out, _, _ = failed_run
    md = (out / "leaderboard.md").read_text()
    nan_row = next(line for line in md.splitlines() if "| nan-at-3 |" in line)
    assert "failed" in nan_row
    kd_row = next(line for line in md.splitlines() if "| kd |" in line)
    assert "failed" in kd_row
    failures = json.loads((out / "failures.json").read_text())
    assert {(f.get("kind"), f.get("name")) for f in failures} >= {("train", "nan-at-3"), ("eval", "kd")}
    rows = json.loads((out / "leaderboard.json").read_text())
    assert any(r["method"] == "sft" and r["metric"] == "rouge_l" for r in rows)
    assert not any(r["method"] == "kd" and r["metric"] == "rouge_l" for r in rows)  # no number for a failed cell
