"""Teacher and student with different tokenizers: allowed exactly for methods that declare
`cross_tokenizer` (uld), refused up front for every other method that needs the teacher, and run end
to end on the toy world with a word-level teacher and a BPE-level student (a micro ci-xtok)."""
from __future__ import annotations

import json

import pytest

from kdbench import models as M
from kdbench.cli import main
from kdbench.errors import ModelError
from micro_run import MICRO

pytestmark = pytest.mark.usefixtures("one_thread")


def _bad(args, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--no-progress", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and not (out / "cells").exists(), err
    return err


def test_own_student_tokenizer_is_refused_for_methods_that_need_one_vocabulary(tmp_path, capsys):
    err = _bad(["--preset", "ci-xtok", "--methods", "sft,kd,uld"], tmp_path, capsys)
    assert "build.student_tokenizer" in err and "kd" in err and "across tokenizers: uld" in err


def _saved_pair(tmp_path):
    for name, words in (("teacher", ["apple", "pear", "plum"]), ("student", ["apple", "fig", "kiwi"])):
        tok = M.build_word_tokenizer(words)
        M.save_model(M.build_preset_model("gpt2-toy-xs", tok, 32, seed=0), tok, tmp_path / name)
    return str(tmp_path / "teacher"), str(tmp_path / "student")


def test_real_models_of_different_vocabularies(tmp_path, capsys):
    t, s = _saved_pair(tmp_path)
    M.check_real_models(t, [s], cross_ok=True)  # allowed when every method distils across tokenizers
    with pytest.raises(ModelError, match="tokenizers differ"):
        M.check_real_models(t, [s])
    err = _bad(["--preset", "ci", "--teacher", t, "--student", s, "--methods", "uld,kd"], tmp_path, capsys)
    assert "tokenizers differ" in err and "across tokenizers: uld; kd cannot" in err


def test_word_teacher_distils_into_a_bpe_student_end_to_end(tmp_path, monkeypatch):
    import kdbench.report.plots as plots

    monkeypatch.setattr(plots, "make_plots", lambda run, plot_dir: ([], []))  # only for this test
    out = tmp_path / "run"
    args = [a if a != "ci" else "ci-xtok" for a in MICRO]
    assert main([*args, "--out", str(out), "--methods", "sft,uld"]) == 0
    teacher_tok = M.load_tokenizer(str(next((out / "cache").glob("tokenizer-*"))))
    cell = out / "cells" / "train" / "gpt2-toy-xs" / "uld"
    student_tok = M.load_tokenizer(str(cell / "model"))
    assert len(student_tok) == 320 and M.real_vocab(student_tok) != M.real_vocab(teacher_tok)
    assert json.loads((cell / "history.json").read_text())[-1]["uld"] > 0
    rows = json.loads((out / "leaderboard.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {"uld", "sft"} <= {r.get("method") for r in rows}
