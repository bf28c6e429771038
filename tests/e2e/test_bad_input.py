"""Bad input fails before any expensive work, with a message that names what was wrong, where,
and what would be valid. One test per case (tests/engine/test_config_cli.py holds the older ones: unknown
method/task/preset, bad --seeds, distill.lr < 0, distill.batch_size 0, an unknown --set key,
max_prompt_length >= max_length via --set, eval.top_p, a missing --teacher path, kd_ratio 1.5, an
unknown key / broken YAML in --config, an --out below a file)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.models import build_preset_model, build_word_tokenizer, save_model


def run(args: list[str], tmp_path: Path, capsys) -> tuple[int, str]:
    out = tmp_path / "out"
    code = main(["--preset", "ci", "--no-progress", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert not (out / "cells").exists(), "work started despite the bad input"
    return code, err


def check(args, tmp_path, capsys, *needles):
    code, err = run(args, tmp_path, capsys)
    assert code == 2, err
    for n in needles:
        assert n in err, f"{n!r} not in: {err}"
    return err


def record(i, **kw):
    r = {"instruction": f"Do thing {i}.", "input": "", "output": f"answer {i}"}
    r.update(kw)
    return json.dumps(r)


def dolly_dir(tmp_path, content: str | bytes) -> Path:
    """A --data-dir whose dolly test file holds `content` (the toy world stays the train task)."""
    f = tmp_path / "data" / "dolly" / "valid.jsonl"
    f.parent.mkdir(parents=True)
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    return f


# -- names ---------------------------------------------------------------------------------------

def test_unknown_metric_did_you_mean(tmp_path, capsys):
    check(["--set", "eval.metrics=[rouge_l,validty]"], tmp_path, capsys,
          "unknown metric 'validty'", "eval.metrics", "Valid metrics:", "Did you mean 'validity'?")


def test_unknown_method_in_method_config(tmp_path, capsys):
    check(["--set", "method_config.minilm.clip=0.1"], tmp_path, capsys,
          "unknown method 'minilm'", "method_config", "Valid methods:", "Did you mean 'minillm'?")


def test_unknown_method_in_method_train(tmp_path, capsys):
    check(["--set", "method_train.kdd.lr=1e-3"], tmp_path, capsys,
          "unknown method 'kdd'", "method_train", "Did you mean 'kd'?")


def test_unknown_task_in_task_options(tmp_path, capsys):
    check(["--set", "task_options.toyy.n_train=3"], tmp_path, capsys,
          "unknown task 'toyy'", "task_options", "Did you mean 'toy'?")


def test_unknown_task_option_key(tmp_path, capsys):
    check(["--set", "task_options.toy.n_creaturez=3"], tmp_path, capsys,
          "'task_options.toy.n_creaturez'", "Valid keys:", "Did you mean 'n_creatures'?")


def test_train_task_without_train_split(tmp_path, capsys):
    check(["--train-task", "vicuna"], tmp_path, capsys, "'train_task'", "'vicuna' has no train split",
          "tasks with one:", "toy")


# -- data files (file:line, field, what is expected) -------------------------------------------

def test_malformed_json_line(tmp_path, capsys):
    f = dolly_dir(tmp_path, record(0) + "\n" + record(1)[:-4] + "\n")
    check(["--tasks", "dolly", "--data-dir", str(tmp_path / "data")], tmp_path, capsys,
          f"{f}:2:", "invalid JSON at column")


def test_missing_field(tmp_path, capsys):
    f = dolly_dir(tmp_path, record(0) + "\n" + json.dumps({"instruction": "x", "input": ""}) + "\n")
    check(["--tasks", "dolly", "--data-dir", str(tmp_path / "data")], tmp_path, capsys,
          f"{f}:2:", "missing field 'output'", "fields present: input, instruction")


def test_wrongly_typed_field(tmp_path, capsys):
    f = dolly_dir(tmp_path, record(0, instruction=5) + "\n")
    check(["--tasks", "dolly", "--data-dir", str(tmp_path / "data")], tmp_path, capsys,
          f"{f}:1:", "field 'instruction' must be a string, got an integer")


def test_empty_data_file(tmp_path, capsys):
    f = dolly_dir(tmp_path, "")
    check(["--tasks", "dolly", "--data-dir", str(tmp_path / "data")], tmp_path, capsys,
          f"{f}:", "file is empty", "expected at least one record")


def test_non_utf8_file(tmp_path, capsys):
    f = dolly_dir(tmp_path, (record(0) + "\n").encode() + b'{"instruction": "caf\xe9", "input": "", "output": "a"}\n')
    check(["--tasks", "dolly", "--data-dir", str(tmp_path / "data")], tmp_path, capsys,
          f"{f}:2:", "not valid UTF-8 (byte 0xe9", "must be saved as UTF-8")


# -- config values out of range ------------------------------------------------------------------

def test_negative_learning_rate_of_a_stage(tmp_path, capsys):
    check(["--set", "teacher_sft.lr=-0.001"], tmp_path, capsys, "'teacher_sft.lr'", "must be > 0", "got -0.001")


def test_alpha_outside_unit_interval_minillm(tmp_path, capsys):
    check(["--methods", "minillm", "--set", "method_config.minillm.teacher_mix_alpha=1.5"], tmp_path, capsys,
          "'method_config.minillm.teacher_mix_alpha'", "must be in [0.0, 1.0]", "got 1.5")


def test_alpha_outside_unit_interval_distillm(tmp_path, capsys):
    check(["--methods", "distillm", "--set", "method_config.distillm.skew_alpha=-0.1"], tmp_path, capsys,
          "'method_config.distillm.skew_alpha'", "must be in [0.0, 1.0]", "got -0.1")


def test_zero_batch_size_of_pretraining(tmp_path, capsys):
    check(["--set", "build.student_pretrain.batch_size=0"], tmp_path, capsys,
          "'build.student_pretrain.batch_size'", "must be >= 1", "got 0")


def test_zero_eval_batch_size(tmp_path, capsys):
    check(["--set", "eval.batch_size=0"], tmp_path, capsys, "'eval.batch_size'", "must be >= 1")


def test_max_prompt_length_not_below_max_length(tmp_path, capsys):
    check(["--set", "max_length=32", "--set", "max_prompt_length=32"], tmp_path, capsys,
          "'max_prompt_length'", "must be in [1, max_length=32)", "got 32")


def test_grad_accum_must_divide_batch_size(tmp_path, capsys):
    check(["--set", "distill.grad_accum=5"], tmp_path, capsys, "'distill.grad_accum'",
          "batch_size 16 must be divisible by grad_accum 5")


def test_wrongly_typed_config_value(tmp_path, capsys):
    check(["--set", "distill.steps=many"], tmp_path, capsys, "'distill.steps'", "expected an integer", "got 'many'")


def test_unknown_device(tmp_path, capsys):
    check(["--device", "tpu"], tmp_path, capsys, "'device'", "'tpu' is not a device", "valid: auto | cpu | cuda")


def test_unknown_dtype(tmp_path, capsys):
    check(["--dtype", "float8"], tmp_path, capsys, "'dtype'", "'float8'", "float32, bfloat16, float16")


# -- YAML config files ---------------------------------------------------------------------------

def test_yaml_unknown_top_level_key(tmp_path, capsys):
    y = tmp_path / "c.yaml"
    y.write_text("methods: [sft]\nmethod_cfg: {}\n")
    check(["--config", str(y)], tmp_path, capsys, "unknown config key 'method_cfg'", "Valid keys:", "method_config")


def test_yaml_unknown_method_config_key(tmp_path, capsys):
    y = tmp_path / "c.yaml"
    y.write_text("method_config:\n  kd:\n    kd_ration: 0.5\n")
    check(["--config", str(y)], tmp_path, capsys, "'method_config.kd.kd_ration'", "Valid keys: kd_ratio",
          "Did you mean 'kd_ratio'?")


def test_yaml_not_a_mapping(tmp_path, capsys):
    y = tmp_path / "c.yaml"
    y.write_text("- sft\n- kd\n")
    check(["--config", str(y)], tmp_path, capsys, f"--config {y}", "expected a mapping of config keys")


def test_yaml_file_missing(tmp_path, capsys):
    check(["--config", str(tmp_path / "nope.yaml")], tmp_path, capsys, "--config", "nope.yaml' does not exist")


# -- models --------------------------------------------------------------------------------------

def test_student_path_does_not_exist(tmp_path, capsys):
    check(["--student", str(tmp_path / "no_student")], tmp_path, capsys, "--student", "does not exist",
          "Valid: a built-in preset (gpt2-toy-l", "a local folder from save_pretrained")


def test_teacher_student_vocabulary_mismatch(tmp_path, capsys):
    for name, words in (("teacher", ["apple", "pear", "plum"]), ("student", ["apple", "fig", "kiwi"])):
        tok = build_word_tokenizer(words)
        save_model(build_preset_model("gpt2-toy-xs", tok, 32, seed=0), tok, tmp_path / name)
    check(["--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student")], tmp_path, capsys,
          f"--teacher '{tmp_path / 'teacher'}' / --student '{tmp_path / 'student'}'", "tokenizers differ",
          "only in teacher: ['pear', 'plum']", "only in student: ['fig', 'kiwi']", "same family/tokenizer")


# -- output ----------------------------------------------------------------------------------------

def test_output_folder_is_a_file(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    code = main(["--preset", "ci", "--out", str(f)])
    err = capsys.readouterr().err
    assert code == 2 and f"--out: output folder '{f}' is not writable" in err and "choose a folder you can write to" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only folders")
def test_output_folder_read_only(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        check(["--out", str(ro / "run")], tmp_path, capsys, "--out", "is not writable", "choose a folder")
    finally:
        ro.chmod(0o700)


# -- judge -----------------------------------------------------------------------------------------

def test_openai_judge_without_key_or_endpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    check(["--judge-backend", "openai", "--judge-model", "gpt-4"], tmp_path, capsys,
          "'judge.backend' is 'openai'", "environment variable OPENAI_API_KEY is not set",
          "no judge endpoint (judge.base_url)", "Set $OPENAI_API_KEY", "judge.backend 'auto'")


def test_judge_key_in_the_config_is_refused(tmp_path, capsys):
    # keys never go into configs: only the name of the environment variable that holds one
    check(["--set", "judge.api_key=sk-should-not-be-here"], tmp_path, capsys, "'judge.api_key' is unknown",
          "valid keys:", "api_key_env", "Did you mean 'api_key_env'?")


def test_auto_judge_without_key_skips_with_one_clear_line(monkeypatch, caplog):
    """backend 'auto' on a task with no exact checker and no key: the metric is skipped with one
    line saying why, and the rest of the benchmark runs (documented behaviour)."""
    import logging

    from kdbench.metrics.judge import metric as judge_metric
    from kdbench.metrics.base import EvalContext
    from kdbench.schema import Example

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge_metric.reset_judge_runs()
    ex = Example(id="a", instruction="Say hi.", input="", prompt="Say hi.", references=["hi"], meta={})

    class NoChecker:
        def check(self, ex, pred):
            return None

    ctx = EvalContext(task=NoChecker(), examples=[ex], predictions=["hello"], seed=1, model=None, tokenizer=None,
                      settings={"judge": {"backend": "auto", "model": "gpt-4"}})
    logger = logging.getLogger("kdbench")
    old, logger.propagate = logger.propagate, True
    try:
        with caplog.at_level(logging.WARNING, logger="kdbench"):
            assert judge_metric._judge_metric(ctx) is None
            assert judge_metric._judge_metric(ctx) is None
    finally:
        logger.propagate = old
    # Unique record objects: another test may leave caplog's handler on the kdbench logger too, so
    # one emitted record can be captured twice; what matters is that it is emitted once.
    records = list({id(r): r for r in caplog.records if "judge metric skipped" in r.getMessage()}.values())
    lines = [r.getMessage() for r in records]
    assert len(lines) == 1 and "OPENAI_API_KEY is not set" in lines[0] and "The rest of the benchmark runs" in lines[0]
