"""Model cards from synthetic cells (the real saved students' cards are checked in tests/e2e/test_e2e.py)."""
from __future__ import annotations

import json

from huggingface_hub import ModelCard

from kdbench.report import load_run
from kdbench.report.cards import _is_hub_id, write_cards
from test_report import make_run


def test_cards_only_in_finished_saved_model_folders(tmp_path):
    out = make_run(tmp_path / "run", methods=("sft", "kd"), tasks=("toy",), artifacts=False)
    kd = out / "cells/train/gpt2-toy-s/kd"
    (kd / "model" / "config.json").write_text("{}")  # a saved transformers model
    (out / "cells/train/gpt2-toy-xs/kd/model/config.json").write_text("{}")
    (out / "cells/train/gpt2-toy-xs/kd/DONE").unlink()  # unfinished: no card yet
    (kd / "config.json").write_text(json.dumps({"method": "kd", "teacher": "gpt2-toy-m",
                                                "method_config": {"kd_ratio": 0.25}, "train": {"steps": 30}}))
    run = load_run(out)
    written = write_cards(run)
    assert written == [kd / "model" / "README.md"]  # sft folders hold no saved model config here
    card = ModelCard.load(written[0])
    rows = [r for r in run.rows if (r["student"], r["method"]) == ("gpt2-toy-s", "kd")]
    assert {(e.metric_type, e.metric_value) for e in card.data.eval_results} == {(r["metric"], r["mean"]) for r in rows}
    assert card.data.base_model is None  # a kdbench preset is not a Hub id: named in the text only
    assert "| base model | `gpt2-toy-s` |" in card.text and "| teacher | `gpt2-toy-m` |" in card.text
    assert '"kd_ratio": 0.25' in card.text  # the cell's frozen method config, not a default
    assert "| toy | validity | 55 | - |" in card.text  # no CI computed (load_run only): shown as -


def test_base_model_only_for_hub_ids(tmp_path, monkeypatch):
    assert _is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not _is_hub_id("gpt2-toy-xs") and not _is_hub_id("prune:k=2")
    local = tmp_path / "org" / "model"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not _is_hub_id("org/model")  # a local folder of that name wins over the Hub
    assert not _is_hub_id(str(local))  # an absolute path has more than one '/'
