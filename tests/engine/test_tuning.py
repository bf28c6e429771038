"""The tuning protocol: the same grid for every method, selection on dev, the selected point's model
in the leaderboard, the tuning table; and the grid parser's errors."""
from __future__ import annotations

import json

import pytest
from micro_run import MICRO

from kdbench.cli import main
from kdbench.errors import ConfigError
from kdbench.layout import RunLayout
from kdbench.tuning import parse_grid, point_label, select


def test_grid_is_the_product_of_the_values_and_rejects_unknown_keys():
    grid = parse_grid({"lr": [1e-3, 3e-3], "distill.steps": [10, 20]})
    assert grid == [{"lr": 1e-3, "steps": 10}, {"lr": 1e-3, "steps": 20}, {"lr": 3e-3, "steps": 10},
                    {"lr": 3e-3, "steps": 20}]
    assert point_label({"steps": 10, "lr": 1e-3}) == "lr=0.001_steps=10"
    with pytest.raises(ConfigError, match="not a training setting.*valid: .*lr"):
        parse_grid({"lrr": [1]})
    with pytest.raises(ConfigError, match="needs a list"):
        parse_grid({"lr": []})


def test_selection_takes_the_best_mean_in_the_metric_direction():
    scores = {"a": [1.0, 3.0], "b": [2.5, 2.5], "c": [float("nan")]}
    assert select(scores, True) == "b" and select(scores, False) == "a"
    assert select({"x": [1.0], "y": [1.0]}, True) == "x"  # a tie keeps the first grid point
    with pytest.raises(ConfigError):
        select({"x": [float("nan")]}, True)


def test_tuned_run_reports_the_selected_point(tmp_path):
    out = tmp_path / "run"
    args = MICRO + ["--methods", "sft,kd", "--out", str(out), "--tune", "lr=1e-4,3e-3",
                    "--set", "task_options.toy.n_dev=6"]
    assert main(args) == 0
    layout = RunLayout(out)
    for method in ("sft", "kd"):
        rec = json.loads(layout.tuning("gpt2-toy-xs", method).read_text())
        assert [g["label"] for g in rec["grid"]] == ["lr=0.0001", "lr=0.003"]
        assert all(len(g["dev"]) == 1 for g in rec["grid"])
        # each grid point really trained with its own value (frozen in the cell's config), and the
        # two points are distinct models
        keys = set()
        for g, lr in zip(rec["grid"], (1e-4, 3e-3)):
            cell = layout.train_cell("gpt2-toy-xs", method, None, g["label"])
            assert json.loads((cell / "config.json").read_text())["train"]["lr"] == lr
            keys.add(json.loads((cell / "result.json").read_text())["key"])
        assert len(keys) == 2
        best = max(rec["grid"], key=lambda g: g["dev_mean"])["label"]
        assert rec["selected"] == best or rec["grid"][0]["dev_mean"] == rec["grid"][1]["dev_mean"]
        # the leaderboard's model of the method is the selected point's
        train = {m: d for s, m, _, d in layout.train_cells()}
        assert train[method].name == f"tune-{rec['selected']}"
        res = json.loads((train[method] / "result.json").read_text())
        ev = json.loads((layout.eval_cell("gpt2-toy-xs", method, "toy", 10) / "config.json").read_text())
        assert ev["model"] == res["key"]
    assert "| kd |" in (out / "tuning.md").read_text()
