"""The command line on the real-task / real-model path: --dry-run reports, the gpt2 and tiny-real
presets, local models by path end to end with --dtype/--device/--teacher-device, and the
tokenizer-mismatch failure. Data is a small fixture written here (plus ../shared/data when
present); models are tiny random GPT-2s saved locally. Nothing touches the network.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdbench import models as M
from kdbench import model_sources as S
from kdbench.cli import build_parser, main, resolve_config
from kdbench.realdata import render_prompt
from fixtures import SHARED_DATA as SHARED, build_random_model

WORDS = ("apple river stone cloud green quick music garden window paper light silver forest "
         "yellow ocean simple answer question travel summer").split()


def _record(i: int) -> dict:
    instr = f"Describe the {WORDS[i % len(WORDS)]} and the {WORDS[(i * 7) % len(WORDS)]} of place {i}."
    inp = f"Context {i}: the {WORDS[(i * 3) % len(WORDS)]} is near the {WORDS[(i * 5) % len(WORDS)]}." if i % 2 else ""
    out = f"The {WORDS[i % len(WORDS)]} is {WORDS[(i * 11) % len(WORDS)]} and calm."
    return {"instruction": instr, "input": inp, "output": out, "prompt": render_prompt(instr, inp)}


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """MiniLLM-format Dolly (dev-only fallback: 130 records -> 30 train, 100 dev) and Vicuna."""
    root = tmp_path_factory.mktemp("data")
    _write_jsonl(root / "dolly" / "minillm" / "dev.jsonl", [_record(i) for i in range(130)])
    _write_jsonl(root / "dolly" / "minillm" / "valid.jsonl", [_record(1000 + i) for i in range(6)])
    _write_jsonl(root / "vicuna" / "minillm" / "valid.jsonl", [_record(2000 + i) for i in range(5)])
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory, data_dir) -> dict[str, str]:
    """teacher (embedding padded by 40 rows), student (same tokenizer), other (a different tokenizer)."""
    tmp = tmp_path_factory.mktemp("models")
    texts = [r["prompt"] + r["output"] for r in map(_record, range(40))]
    tok = M.build_bpe_tokenizer(texts, vocab_size=350)
    other = M.build_bpe_tokenizer(["unrelated words 0123456789 zebra quartz"] * 20, vocab_size=300)
    out = {}
    for name, t, kw in (("teacher", tok, {"hidden": 32, "layers": 2, "vocab_rows": len(tok) + 40}),
                        ("student", tok, {"hidden": 16, "layers": 1}),
                        ("other", other, {"hidden": 16, "layers": 1})):
        M.save_model(build_random_model("gpt2", t, n_positions=256, seed=1, **kw), t, tmp / name)
        out[name] = str(tmp / name)
    return out


def _flags(data_dir, out: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--out", str(out), "--no-progress", *extra]


# -- dry run --------------------------------------------------------------------------------------

@pytest.mark.skipif(not (SHARED / "dolly").is_dir(), reason=f"shared data folder {SHARED} is absent")
def test_dry_run_on_the_shared_data(models, tmp_path, capsys):
    out = tmp_path / "never-created"
    # a real teacher: its tokenizer counts prompt lengths (no tokenizer training in the test)
    args = ["--tasks", "dolly,self_inst,vicuna,sni,unni,sst2,boolq", "--data-dir", str(SHARED), "--dry-run",
            "--teacher", models["teacher"], "--student", models["student"], "--out", str(out),
            "--set", "max_length=512", "--set", "max_prompt_length=256"]  # tiny's 24 would keep no real prompt
    assert main(args) == 0
    text = capsys.readouterr().out
    for task, n in (("dolly", 500), ("self_inst", 242), ("vicuna", 80), ("sni", 1694), ("sst2", 872), ("boolq", 3270)):
        assert f"{task}/test: {n} examples loaded" in text, task
    # unni's long-response data is not in the shared folder: listed as unavailable, others still reported
    assert "unni: UNAVAILABLE" in text and "no data found for task 'unni'" in text
    assert "uinst/minillm/11_/valid.jsonl" in text and "How to get it" in text
    assert "unavailable (no data" in text and "unni" in text.splitlines()[-1]
    assert "example prompt (dolly-test-00000):" in text and "  | ### Response:" in text
    assert "prompt length:" in text and "dropped as prompt_too_long" in text
    assert "toy/train: " in text  # the default train task is reported too
    assert not out.exists()  # a dry run writes nothing


def test_dry_run_reports_malformed_data_with_file_and_line(data_dir, models, tmp_path, capsys):
    bad = tmp_path / "bad"
    _write_jsonl(bad / "dolly" / "minillm" / "dev.jsonl", [_record(i) for i in range(130)])
    (bad / "vicuna" / "minillm").mkdir(parents=True)
    (bad / "vicuna" / "minillm" / "valid.jsonl").write_text(
        json.dumps(_record(1)) + "\n" + json.dumps({"instruction": "x"}) + "\n", encoding="utf-8")
    _write_jsonl(bad / "dolly" / "minillm" / "valid.jsonl", [_record(1000)])
    args = ["--tasks", "dolly,vicuna", "--train-task", "dolly", "--data-dir", str(bad), "--dry-run",
            "--teacher", models["teacher"], "--student", models["student"]]
    assert main(args) == 2
    cap = capsys.readouterr()
    assert "dolly/test: 1 examples loaded" in cap.out  # the good task is still reported
    assert "vicuna: ERROR" in cap.out and "valid.jsonl:2" in cap.out and "'output'" in cap.out
    assert "problem(s)" in cap.err


def test_dry_run_without_train_data_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = ["--preset", "tiny-real", "--data-dir", str(tmp_path / "empty"), "--dry-run"]
    assert main(args) == 2
    cap = capsys.readouterr()
    assert "dolly: ERROR" in cap.out and "no data found for task 'dolly' split 'train'" in cap.out


# -- presets --------------------------------------------------------------------------------------

def _resolve(*argv: str):
    return resolve_config(build_parser().parse_args(list(argv)))


def test_gpt2_preset_encodes_minillm(data_dir):
    c = _resolve("--preset", "gpt2")
    assert c.teacher == "gpt2-xl" and c.students == ["gpt2", "gpt2-medium", "gpt2-large"]
    assert c.train_task == "dolly" and c.tasks == ["dolly", "self_inst", "vicuna", "sni", "unni"]
    assert (c.max_length, c.max_prompt_length) == (512, 256)
    assert c.eval.seeds == [10, 20, 30, 40, 50] and c.eval.max_new_tokens == 256
    assert (c.eval.temperature, c.eval.top_p, c.eval.top_k) == (1.0, 1.0, 0)
    # 10 / 20 epochs over 11,435 train records at batch 32 (357 steps an epoch)
    assert (c.teacher_sft.lr, c.teacher_sft.steps, c.teacher_sft.batch_size) == (5e-5, 3570, 32)
    assert (c.distill.lr, c.distill.steps, c.distill.batch_size) == (5e-4, 7140, 32)
    assert c.distill.schedule == "cosine" and c.distill.weight_decay == 1e-2 and c.distill.warmup_steps == 0
    assert _resolve("--preset", "gpt2-340m").distill.lr == 1e-4
    assert _resolve("--preset", "gpt2-760m").distill.steps == 3570
    assert _resolve("--preset", "gpt2-760m").students == ["gpt2-large"]
    assert c.eval.no_repeat_ngram_size == 6  # LMOps evaluate.py's default


def _budget(c, method):
    from kdbench.method import METHODS

    t = c.train_config_for(method, None, METHODS.get(method).budget)
    return (t.steps, t.batch_size, t.lr, t.schedule, t.warmup_steps, t.beta2, t.weight_decay)


def test_gpt2_presets_give_every_on_policy_method_its_paper_budget(data_dir):
    for preset in ("gpt2", "gpt2-340m", "gpt2-760m"):
        c = _resolve("--preset", preset)
        # LMOps train_*_xl.sh: 5e-6 constant after 100 warm-up steps, 5000 iterations, mini-batch 64,
        # trainer.py's betas (0.9, 0.95) and weight decay 1e-6 (MiniLLM's alternatives get the same)
        for m in ("minillm", "minillm-no-single-step", "single_step"):
            assert _budget(c, m) == (5000, 64, 5e-6, "constant", 100, 0.95, 1e-6), (preset, m)
        assert _budget(c, "ranking") == (5000, 16, 5e-6, "constant", 100, 0.95, 1e-6)  # 16 prompts x 4 samples
    # DistiLLM's GPT-2 scripts (x 16 GPUs), 11,435 train records: torch's default betas, cosine, no warmup
    gpt2, large = _resolve("--preset", "gpt2"), _resolve("--preset", "gpt2-760m")
    assert _budget(gpt2, "distillm") == (20 * 89, 128, 5e-4, "cosine", 0, 0.999, 1e-2)
    assert _budget(large, "distillm") == (10 * 178, 64, 1e-4, "cosine", 0, 0.999, 1e-2)
    for m in ("gkd", "js", "tvd"):
        assert _budget(gpt2, m) == (20 * 357, 32, 5e-4, "cosine", 0, 0.999, 1e-2), m
        assert _budget(large, m) == (10 * 89, 128, 5e-4, "cosine", 0, 0.999, 1e-2), m
    assert _budget(gpt2, "kd") == (7140, 32, 5e-4, "cosine", 0, 0.999, 1e-2)  # unchanged


def test_gpt2_preset_validates_offline_with_stubbed_hub_models(data_dir, models, monkeypatch, tmp_path, capsys):
    """The full --dry-run validation of the gpt2 preset, hub names answered by local stand-ins."""
    from transformers import GPT2Config

    tok = M.load_tokenizer(models["student"])
    monkeypatch.setattr(S, "in_hub_cache", lambda name: True)
    monkeypatch.setattr(M, "load_tokenizer", lambda name: tok)
    # GPT-2's real embedding matches its vocabulary exactly; pad one model to exercise the row check
    monkeypatch.setattr(M, "load_config",
                        lambda name: GPT2Config(vocab_size=len(tok) + (64 if name == "gpt2-xl" else 0)))
    out = tmp_path / "o"
    assert main(["--preset", "gpt2", "--data-dir", str(data_dir), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "teacher gpt2-xl; students gpt2, gpt2-medium, gpt2-large" in text
    # (teacher + 3 students x (base, sft, kd)) models x 5 tasks x 5 seeds
    assert "plan: 6 training cells (1 training seed(s)), 250 evaluation cells" in text
    assert "dolly/train: 30 examples loaded" in text and "dolly/test: 6 examples loaded" in text
    assert "vicuna/test: 5 examples loaded" in text
    assert "unavailable (no data" in text and "self_inst, sni, unni" in text
    assert not out.exists()


def test_tiny_real_preset_is_consistent(data_dir):
    c = _resolve("--preset", "tiny-real", "--data-dir", str(data_dir))
    assert c.train_task == "dolly" and c.tasks == ["dolly", "self_inst", "vicuna", "sni"]
    assert c.build.tokenizer == "bpe" and M.is_preset(c.teacher) and all(M.is_preset(s) for s in c.students)
    assert c.max_prompt_length + c.eval.max_new_tokens <= c.max_length  # fits the position table
    assert c.eval.max_prompt_tokens == c.max_prompt_length and c.eval.max_examples
    from kdbench.runner import Benchmark

    dolly = Benchmark(c, Path("/nonexistent")).tasks.get("dolly")
    docs = dolly.pretrain_texts()  # base models pretrain on the train split's text only
    assert len(docs) == len(dolly.examples("train")) == 30
    assert not any(ex.instruction in "\n".join(docs) for ex in dolly.examples("test"))
    # off by default: real base models come pretrained
    gpt2 = Benchmark(_resolve("--preset", "gpt2", "--data-dir", str(data_dir)), Path("/x"))
    assert gpt2.tasks.get("dolly").pretrain_texts() is None


# -- real models end to end -----------------------------------------------------------------------

def test_local_models_end_to_end_with_dtype_and_teacher_placement(data_dir, models, tmp_path, monkeypatch):
    loads: list[tuple[str, str]] = []
    real_load = M.load_model

    def spy(path, dtype="float32", device="cpu"):
        loads.append((Path(path).parent.name if Path(path).name == "model" else Path(path).name, dtype))
        return real_load(path, dtype, device)

    monkeypatch.setattr(M, "load_model", spy)
    out = tmp_path / "run"
    argv = _flags(data_dir, out, "--preset", "ci", "--teacher", models["teacher"], "--student", models["student"],
                  "--methods", "sft,kd", "--tasks", "dolly", "--train-task", "dolly", "--seeds", "10",
                  "--dtype", "bfloat16", "--device", "cpu", "--teacher-device", "cpu",
                  "--set", "max_length=160", "--set", "max_prompt_length=128",
                  "--set", "teacher_sft.steps=2", "--set", "teacher_sft.batch_size=4",
                  "--set", "distill.steps=2", "--set", "distill.batch_size=4",
                  "--set", "eval.max_examples=3", "--set", "eval.max_new_tokens=4")
    assert main(argv) == 0
    rows = json.loads((out / "leaderboard.json").read_text())
    have = {(r["method"], r["metric"]) for r in rows if r["task"] == "dolly"}
    for method in ("teacher", "student-base", "sft", "kd"):
        for metric in ("rouge_l", "dist4", "lm_loss"):  # the paper's Dolly metrics by default
            assert (method, metric) in have, (method, metric)
    assert ("kd", "exposure_bias") in have
    # Dolly's default decoding blocks 6-grams (LMOps' evaluation), resolved into the eval cell's config
    ev = json.loads((out / "cells/eval/student/kd/dolly/seed10/config.json").read_text())["eval"]
    assert ev["no_repeat_ngram_size"] == 6
    # trained models load in fp32 (bf16 would be mixed precision on a GPU); the frozen teacher of
    # the kd cell and every evaluated model load in --dtype
    by_dtype = {d for _, d in loads}
    assert by_dtype == {"float32", "bfloat16"}
    assert ("teacher", "float32") in loads and ("student", "float32") in loads  # SFT stages train them
    assert any(name.startswith("teacher-sft") and d == "bfloat16" for name, d in loads)  # kd's teacher
    frozen = json.loads((out / "config.json").read_text())
    assert (frozen["dtype"], frozen["device"], frozen["teacher_device"]) == ("bfloat16", "cpu", "cpu")


@pytest.mark.parametrize("padded", [True, False])
def test_teacher_samples_never_draw_a_padded_embedding_row(data_dir, models, tmp_path, monkeypatch, padded):
    """SeqKD's teacher-samples stage samples over the tokenizer's ids only, as evaluation does: the
    padded teacher (40 extra rows) gets the cut; an unpadded one samples (and keys) as before."""
    import kdbench.stage_data as SD

    teacher = models["teacher"]
    if not padded:
        tok = M.load_tokenizer(models["student"])
        M.save_model(build_random_model("gpt2", tok, hidden=32, layers=1, n_positions=256, seed=3), tok,
                     tmp_path / "unpadded")
        teacher = str(tmp_path / "unpadded")

    seen = []
    real_sample = SD.sample

    def spy(model, prompts, scfg, *a, **kw):
        seen.append(scfg.vocab_size)
        r = real_sample(model, prompts, scfg, *a, **kw)
        assert all(t < len(M.load_tokenizer(models["student"]).get_vocab()) for ids in r.response_ids for t in ids)
        return r

    monkeypatch.setattr(SD, "sample", spy)
    argv = _flags(data_dir, tmp_path / "run", "--preset", "ci", "--teacher", teacher, "--student",
                  models["student"], "--methods", "seqkd", "--tasks", "dolly", "--train-task", "dolly",
                  "--seeds", "10", "--set", "max_length=160", "--set", "max_prompt_length=128",
                  "--set", "teacher_sft.steps=0", "--set", "distill.steps=1", "--set", "distill.batch_size=4",
                  "--set", "eval.max_examples=2", "--set", "eval.max_new_tokens=3", "--set", "eval.metrics=[rouge_l]")
    assert main(argv) == 0
    n = len(M.load_tokenizer(models["student"]).get_vocab())
    assert seen and set(seen) == ({n} if padded else {None})


def test_tokenizer_mismatch_fails_before_any_work(data_dir, models, tmp_path, capsys):
    out = tmp_path / "never"
    argv = _flags(data_dir, out, "--teacher", models["teacher"], "--student", models["other"],
                  "--tasks", "dolly", "--train-task", "dolly")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "tokenizers differ" in err and models["other"] in err and "shared vocabulary" in err
    assert not out.exists()  # nothing was created, trained or cached


def test_unavailable_device_fails_before_any_work(data_dir, models, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "never"
    argv = _flags(data_dir, out, "--teacher", models["teacher"], "--student", models["student"],
                  "--tasks", "dolly", "--train-task", "dolly", "--teacher-device", "cuda:1")
    assert main(argv) == 2
    assert "config key 'teacher_device': 'cuda:1' needs CUDA" in capsys.readouterr().err
    assert not out.exists()
