"""Config validation and CLI errors: what was wrong, where, and what would be valid."""
import json

import pytest

from kdbench.cli import main
from kdbench.config import BenchConfig, EvalConfig, TrainConfig, from_dict
from kdbench.errors import ConfigError
from kdbench.registry import Registry


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_prints_every_registry_with_descriptions(capsys):
    code, out, _ = run_cli(["--list"], capsys)
    assert code == 0
    for name in ("sft", "kd", "toy", "rouge_l", "validity", "ci", "tiny", "gpt2-toy-m"):
        assert any(line.strip().startswith(name + " ") for line in out.splitlines()), name
    for header in ("methods:", "tasks:", "metrics:", "presets:"):
        assert header in out


@pytest.mark.parametrize("args,needle", [
    (["--methods", "sft,kdd"], "unknown method 'kdd'"),
    (["--tasks", "toyy"], "Did you mean 'toy'?"),
    (["--preset", "tinny"], "Did you mean 'tiny'?"),
    (["--seeds", "10,x"], "--seeds"),
    (["--set", "distill.lr=-1"], "'distill.lr': must be > 0"),
    (["--set", "distill.batch_size=0"], "'distill.batch_size': must be >= 1"),
    (["--set", "distil.lr=1e-3"], "unknown config key 'distil'. Valid keys:"),
    (["--set", "max_prompt_length=48"], "max_prompt_length"),
    (["--set", "eval.top_p=2"], "eval.top_p"),
    (["--teacher", "./no/such/model"], "does not exist"),
    (["--set", "method_config.kd.kd_ratio=1.5"], "method_config.kd.kd_ratio"),
    (["--peft", "lora", "--set", "peft.r=0"], "'peft.r': must be >= 1"),
    (["--set", "peft.rank=4"], "unknown config key 'peft.rank'"),
    (["--set", "report_to=mlflow"], "'report_to': 'mlflow' is not one of none, tensorboard, wandb, trackio"),
])
def test_bad_input_fails_before_any_work(args, needle, capsys, tmp_path):
    code, out, err = run_cli(args + ["--out", str(tmp_path / "o"), "--preset" if "--preset" not in args else "--no-progress"]
                             + ([] if "--preset" in args else ["ci"]), capsys)
    assert code == 2
    assert needle in err
    assert not (tmp_path / "o" / "cells").exists()


def test_unknown_method_lists_the_valid_names(capsys, tmp_path):
    code, _, err = run_cli(["--preset", "ci", "--methods", "kdd", "--out", str(tmp_path)], capsys)
    assert code == 2 and "Valid methods:" in err and "sft" in err and "Did you mean 'kd'?" in err


def test_yaml_config_unknown_key_and_bad_yaml(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("distill:\n  stepz: 3\n")
    code, _, err = run_cli(["--preset", "ci", "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "unknown config key 'distill.stepz'" in err and "Did you mean 'steps'?" in err
    cfg.write_text("distill: [\n")
    code, _, err = run_cli(["--preset", "ci", "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "invalid YAML" in err and "c.yaml:" in err


def test_typed_configs_validate_on_construction():
    with pytest.raises(ConfigError, match="grad_accum"):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="cosinus")
    with pytest.raises(ConfigError, match="eval.seeds"):
        EvalConfig(seeds=[10, 10])
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(TrainConfig, {"steps": "many"})
    with pytest.raises(ConfigError, match="max_prompt_length"):
        BenchConfig(max_length=64, max_prompt_length=64)
    cfg = from_dict(BenchConfig, {"eval": {"seeds": "1,2"}, "distill": {"lr": "1e-3"}})
    assert cfg.eval.seeds == [1, 2] and cfg.distill.lr == 1e-3


def test_paper_defaults():
    ev = EvalConfig()
    assert ev.seeds == [10, 20, 30, 40, 50] and ev.temperature == 1.0 and ev.top_p == 1.0 and ev.top_k == 0
    assert ev.max_new_tokens == 256 and ev.max_prompt_tokens == 256
    assert BenchConfig().max_length == 512 and BenchConfig().max_prompt_length == 256


def test_registry_did_you_mean():
    reg = Registry("thing")
    reg.add("alpha", object())
    with pytest.raises(KeyError, match="Did you mean 'alpha'"):
        reg.get("alpah")


def test_summarize_needs_a_run_folder(tmp_path, capsys):
    code, _, err = run_cli(["summarize", str(tmp_path)], capsys)
    assert code == 2 and "no cells/ folder" in err


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(["--preset", "ci", "--out", str(blocker / "sub")], capsys)
    assert code == 2 and "not writable" in err


def test_peft_and_report_to_flags_reach_the_config():
    from kdbench.cli import build_parser, resolve_config

    cfg = resolve_config(build_parser().parse_args(["--preset", "ci", "--peft", "lora", "--report-to", "tensorboard",
                                                    "--set", "peft.r=4"]))
    assert (cfg.peft.method, cfg.peft.r, cfg.peft.alpha, cfg.peft.dropout) == ("lora", 4, 32.0, 0.1)
    assert cfg.report_to == "tensorboard"
    default = resolve_config(build_parser().parse_args(["--preset", "ci"]))
    assert not default.peft.enabled and default.peft.spec() is None and default.report_to == "none"


def test_new_train_settings_enter_cache_keys_only_off_their_default():
    """chunked_loss / loss_chunk_tokens / loss_chunk_elements came after keys existed: at their defaults the keys of cached
    stages and cells stay as they were; set otherwise, they are part of the key."""
    from kdbench.config import TrainConfig, train_key

    assert not {"chunked_loss", "loss_chunk_tokens", "loss_chunk_elements"} & set(train_key(TrainConfig()))
    assert train_key(TrainConfig(chunked_loss="on"))["chunked_loss"] == "on"
    assert train_key(TrainConfig(loss_chunk_tokens=64))["loss_chunk_tokens"] == 64
    assert train_key(TrainConfig(loss_chunk_elements=10 ** 6))["loss_chunk_elements"] == 10 ** 6
