"""The integrations end to end on a micro ci run: `--peft lora` with a Llama student trains sft, kd
and minillm through adapters (cells keep the adapter; evaluation loads it, or merged weights with
peft.save_merged), the leaderboard and cost table show trainable parameters, and
`--report-to tensorboard` leaves one TensorBoard run per trained student holding every step's loss
and the eval means."""
from __future__ import annotations

import csv
import json

import pytest

from kdbench.cli import main
from micro_run import MICRO
from fixtures import tensorboard_scalars as scalars

ARGS = [*MICRO, "--methods", "sft,kd,minillm", "--student", "llama-toy-xs", "--peft", "lora",
        "--report-to", "tensorboard"]


def run(args: list[str]) -> int:
    """main() without plots (no test here looks at figures); the patch is undone for later tests."""
    import kdbench.report.plots as plots

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "make_plots", lambda run, plot_dir: ([], []))
        return main(args)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    assert run([*ARGS, "--out", str(out)]) == 0
    return out


def test_lora_students_train_only_their_adapters(lora_run):
    cells = lora_run / "cells" / "train" / "llama-toy-xs"
    for m in ("kd", "minillm"):
        res = json.loads((cells / m / "result.json").read_text())
        assert res["model_path"].endswith("adapter") and (cells / m / "adapter" / "adapter_config.json").exists()
        assert not (cells / m / "model").exists()  # save_merged is off by default
        assert 0 < res["params"]["trainable"] < res["params"]["total"] / 10
        assert json.loads((cells / m / "config.json").read_text())["peft"]["method"] == "lora"
    sft = json.loads((cells / "sft" / "result.json").read_text())
    assert sft["params"] == res["params"]  # the SFT stage trained the same adapter shape
    rows = {r["method"]: r for r in csv.DictReader((lora_run / "cost.csv").open())}
    for m in ("sft", "kd", "minillm"):
        assert int(rows[m]["trainable_params"]) == res["params"]["trainable"]
        assert int(rows[m]["params"]) == res["params"]["total"]
    board = (lora_run / "leaderboard.md").read_text()
    assert f"{res['params']['trainable']} trainable)" in board
    # every trained student was evaluated from its adapter
    for m in ("sft", "kd", "minillm"):
        assert (lora_run / "cells" / "eval" / "llama-toy-xs" / m).is_dir()


def test_tensorboard_runs_hold_each_students_losses_and_eval_metrics(lora_run):
    tb = lora_run / "tensorboard" / "llama-toy-xs"
    for m in ("sft", "kd", "minillm"):
        got = scalars(tb / m)
        assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4, 5, 6], m  # every step of distill.steps=6
        assert any(k.startswith("eval/toy/") for k in got), m
        assert all(s == 6 for k, v in got.items() if k.startswith("eval/") for s, _ in v)
    assert "train/pg" in scalars(tb / "minillm")  # the method's own loss terms, not only the total
    hist = json.loads((lora_run / "cells" / "train" / "llama-toy-xs" / "kd" / "history.json").read_text())
    tb_loss = [v for _, v in scalars(tb / "kd")["train/loss"]]
    assert hist[-1]["loss"] == pytest.approx(sum(tb_loss[3:]) / 3, rel=1e-5)  # log_every=3: last window


def test_merged_weights_on_request_and_evaluation_loads_them(lora_run):
    assert run([*ARGS, "--methods", "kd", "--report-to", "none", "--set", "peft.save_merged=true",
                 "--out", str(lora_run)]) == 0
    cell = lora_run / "cells" / "train" / "llama-toy-xs" / "kd"
    res = json.loads((cell / "result.json").read_text())
    assert res["model_path"].endswith("model") and (cell / "model" / "config.json").exists()
    assert (cell / "adapter" / "adapter_config.json").exists()
    assert json.loads((cell / "config.json").read_text())["peft"]["save_merged"] is True
    ev = lora_run / "cells" / "eval" / "llama-toy-xs" / "kd"
    assert {json.loads(f.read_text())["model"] for f in ev.rglob("config.json")} == {res["key"]}  # re-evaluated
