"""The L_PT pretraining corpus (config pt_corpus) end to end, and the "no L_PT" label in reports."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.corpus import read_documents
from kdbench.errors import ConfigError
from micro_run import MICRO


def test_read_documents_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("the bako is red .\n\n\n  the moku eats plums .  \n")
    (tmp_path / "b.jsonl").write_text('{"text": "the zifa lives in the cave ."}\n\n{"text": "  "}\n')
    assert read_documents([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]) == [
        "the bako is red .", "the moku eats plums .", "the zifa lives in the cave ."]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: .*\"text\""):
        read_documents([str(tmp_path / "bad.jsonl")])
    with pytest.raises(ConfigError, match="neither plain text"):
        read_documents([str(tmp_path / "a.csv")])
    with pytest.raises(ConfigError, match="does not exist"):
        read_documents([str(tmp_path / "missing.txt")])


def _corpus(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "corpus.txt"
    # toy-world words, so the word tokenizer knows them; 40 documents give several 48-token blocks
    p.write_text("\n\n".join(f"{text} {i % 7} ." for i in range(40)))
    return p


def test_pt_corpus_is_a_cached_stage_in_minillm_key_and_labels(tmp_path, monkeypatch):
    import kdbench.report.plots as plots

    monkeypatch.setattr(plots, "make_plots", lambda run, plot_dir: ([], []))  # no test here looks at figures
    out = tmp_path / "run"
    corpus = _corpus(tmp_path, "the bako is red and lives in the cave")
    args = MICRO + ["--methods", "minillm", "--out", str(out), "--set", f"pt_corpus=[{corpus}]",
                    "--set", "method_config.minillm.rollout_minibatches=1", "--set", "method_config.minillm.ppo_epochs=1"]
    assert main(args) == 0
    stages = list((out / "cache").glob("pt-corpus-*"))
    assert len(stages) == 1 and (stages[0] / "blocks.pt").exists()
    assert json.loads((stages[0] / "DONE").read_text())["documents"] == 40
    cell = next((out / "cells").rglob("minillm/config.json")).parent
    key1 = json.loads((cell / "config.json").read_text())["pt_corpus"]
    assert "variant" not in json.loads((cell / "result.json").read_text())  # L_PT ran: the full method
    assert "pt" in json.loads((cell / "history.json").read_text())[-1]
    # another corpus: a new stage and a new minillm key; the SFT student it starts from is kept
    sft_stage = next((out / "cache").glob("student-sft-*/DONE")).read_text()
    corpus.write_text("\n\n".join(f"the moku eats plums {i % 5} ." for i in range(40)))
    assert main(args) == 0
    assert len(list((out / "cache").glob("pt-corpus-*"))) == 2
    assert json.loads((cell / "config.json").read_text())["pt_corpus"] != key1
    assert next((out / "cache").glob("student-sft-*/DONE")).read_text() == sft_stage

    # a run whose minillm skipped L_PT is labelled in every report
    res = json.loads((cell / "result.json").read_text())
    (cell / "result.json").write_text(json.dumps({**res, "variant": "no L_PT"}))
    assert main(["summarize", str(out)]) == 0
    assert "| minillm (no L_PT) |" in (out / "leaderboard.md").read_text()
    assert "minillm (no L\\_PT)" in (out / "leaderboard.tex").read_text()
    assert "| minillm (no L_PT) |" in (out / "cost.md").read_text()
    assert "minillm (no L_PT)" in (out / "report.html").read_text()
    rows = json.loads((out / "leaderboard.json").read_text())
    assert {r.get("label") for r in rows if r["method"] == "minillm"} == {"minillm (no L_PT)"}
    if (out / "findings.md").exists():
        assert "**minillm (no L_PT)**" in (out / "findings.md").read_text()


def test_missing_pt_corpus_fails_before_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(MICRO + ["--methods", "minillm", "--out", str(out), "--set", f"pt_corpus=[{tmp_path}/nope.txt]"]) != 0
    assert "pt_corpus" in capsys.readouterr().err and not (out / "cache").exists()
