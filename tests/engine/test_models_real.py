"""The real-model path (kdbench/models.py and its use by the runner and MethodContext).

Randomly initialised GPT-2, OPT, Llama and Qwen2 models are saved with save_pretrained next to a
tokenizer built offline, then loaded by path the way `--teacher/--student PATH` loads them. Nothing
here touches the network.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy  # noqa: E402
import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from kdbench import models as M  # noqa: E402
from kdbench import model_sources as S  # noqa: E402
from kdbench.config import TrainConfig  # noqa: E402
from kdbench.data import IGNORE, collate, encode_pair  # noqa: E402
from kdbench.errors import ConfigError, ModelError  # noqa: E402
from kdbench.method import MethodContext, make_method  # noqa: E402
from kdbench.plugins import load_plugins  # noqa: E402
from kdbench.realdata import render_prompt  # noqa: E402
from kdbench.sampling import SamplingConfig, sample  # noqa: E402
from kdbench.schema import Example  # noqa: E402
from fixtures import build_random_model  # noqa: E402

load_plugins()

TEXT = ["Name three primary colors. Red, blue and yellow are the primary colors of paint.",
        "Explain what a compiler does. A compiler translates source code into machine code.",
        "Which is the largest ocean? The Pacific Ocean is the largest and deepest ocean on Earth.",
        "Give me a list of fruits. Apples, bananas, oranges, pears and grapes are fruits."] * 10


_BPE = {}


def _tokenizer(tmp, with_pad: bool):
    """A BPE tokenizer; without a pad token like GPT-2/Llama (load_tokenizer then pads with EOS)."""
    if "tok" not in _BPE:  # trained once per module: it is the slow part
        _BPE["tok"] = M.build_bpe_tokenizer(TEXT + [render_prompt("x", "y")] * 5, vocab_size=400)
    tok = copy.deepcopy(_BPE["tok"])
    if not with_pad:
        tok.pad_token = None
    path = tmp / ("tok-pad" if with_pad else "tok-nopad")
    tok.save_pretrained(path)
    return M.load_tokenizer(str(path))


def _examples(n=6):
    out = []
    for i in range(n):
        instr, _, resp = TEXT[i % 4].partition("? ") if "?" in TEXT[i % 4] else TEXT[i % 4].partition(". ")
        out.append(Example(id=f"ex{i}", instruction=instr, input="", prompt=render_prompt(instr),
                           references=[resp]))
    return out


# Families without a pad token (GPT-2, Llama) get pad = EOS; OPT and Qwen2 tokenizers carry one.
FAMILIES = [("gpt2", False), ("opt", True), ("llama", False), ("qwen2", True)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{family: (teacher_path, student_path)}: teacher embedding padded to a multiple of 64 rows."""
    tmp = tmp_path_factory.mktemp("real-models")
    out = {}
    for family, with_pad in FAMILIES:
        tok = _tokenizer(tmp, with_pad)
        # AutoTokenizer may load a tokenizer saved next to a model with that family's own class
        # (transformers 5: Qwen2Tokenizer, which adds '<|endoftext|>'): size the models from the
        # tokenizer as it loads from a model folder
        probe = tmp / f"{family}-probe"
        M.save_model(build_random_model(family, tok, hidden=8, layers=1), tok, probe)
        tok = M.load_tokenizer(str(probe))
        padded = -(-len(tok) // 64) * 64 + 64  # strictly larger than the vocabulary
        teacher = build_random_model(family, tok, hidden=48, layers=2, heads=2, vocab_rows=padded, init_std=0.2,
                                       seed=1)
        student = build_random_model(family, tok, hidden=32, layers=1, heads=2, init_std=0.2, seed=2)
        t_path, s_path = tmp / f"{family}-teacher", tmp / f"{family}-student"
        M.save_model(teacher, tok, t_path)
        M.save_model(student, tok, s_path)
        out[family] = (str(t_path), str(s_path))
    return out


def _ctx(student, teacher, tok, tmp, steps=1):
    ctx = MethodContext(student=student, teacher=teacher, tokenizer=tok, train_examples=_examples(),
                        train_cfg=TrainConfig(steps=steps, batch_size=4, lr=1e-3, log_every=1), max_length=96,
                        max_prompt_length=64, run_dir=tmp, device="cpu", progress=False)
    ctx.vocab_size = len(tok)
    return ctx


@pytest.mark.parametrize("family", [f for f, _ in FAMILIES])
def test_family_loads_by_path_trains_one_kd_step_and_samples(family, saved, tmp_path):
    t_path, s_path = saved[family]
    for p, where in ((t_path, "--teacher"), (s_path, "--student")):
        M.check_model_name(p, where)
    M.check_real_models(t_path, [s_path])  # same tokenizer; the teacher's extra embedding rows are fine
    tok = M.load_tokenizer(t_path)
    teacher, student = M.load_model(t_path), M.load_model(s_path)
    assert M.embedding_rows(teacher.config) > len(tok) == M.embedding_rows(student.config)
    before = [p.detach().clone() for p in student.parameters()]

    ctx = _ctx(student, teacher, tok, tmp_path)
    make_method("kd").train(ctx)
    (rec,) = ctx.history
    assert math.isfinite(rec["loss"]) and math.isfinite(rec["fkl"]) and rec["fkl"] >= -1e-6
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert ctx.counters["teacher_forward_tokens"] > 0

    # Left padding: a batch of prompts of different lengths gives the same greedy tokens as each
    # prompt alone, and as a cache-free recompute (positions and the KV cache are right).
    student.eval()
    prompts = [ids for ids in (ctx.prompt_ids(_examples(3)))]
    prompts[1] = prompts[1][-9:]  # make the lengths differ a lot
    cfg = SamplingConfig(max_new_tokens=6, top_k=1)
    batched = sample(student, prompts, cfg, tok.eos_token_id, tok.pad_token_id, seed=3, batch_size=3).response_ids
    alone = [sample(student, [p], cfg, tok.eos_token_id, tok.pad_token_id, seed=3).response_ids[0] for p in prompts]
    assert batched == alone
    with torch.no_grad():
        for p, got in zip(prompts, batched):
            ids = list(p)
            for _ in got:
                ids.append(int(student(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            assert ids[len(p):] == got
    # teacher-mixed sampling over two embedding sizes uses the shared ids only
    r = sample(student, prompts, SamplingConfig(max_new_tokens=4), tok.eos_token_id, tok.pad_token_id, seed=4,
               mix_model=teacher, mix_alpha=0.2)
    assert all(0 <= t < len(tok) for resp in r.response_ids for t in resp)
    assert all(len(a) == len(b) for a, b in zip(r.response_ids, r.mix_logp))


def test_padded_teacher_logits_are_cut_to_the_real_vocabulary(tmp_path):
    tok = _tokenizer(tmp_path, with_pad=True)
    V = len(tok)
    exact = build_random_model("gpt2", tok, hidden=32, layers=1, seed=5)
    padded = build_random_model("gpt2", tok, hidden=32, layers=1, vocab_rows=V + 37, seed=6)
    state = exact.state_dict()
    state = {k: (torch.cat([v, torch.randn(37, v.shape[1])]) if v.shape[:1] == (V,) else v) for k, v in state.items()}
    padded.load_state_dict(state)  # same weights, plus 37 junk rows
    student = build_random_model("gpt2", tok, hidden=16, layers=1, seed=7)
    batch = _ctx(student, exact, tok, tmp_path).encode(_examples(4))
    want = _ctx(student, exact, tok, tmp_path).teacher_logits(batch)
    got = _ctx(student, padded, tok, tmp_path).teacher_logits(batch)
    assert got.shape == want.shape == (*batch.input_ids.shape, V)
    torch.testing.assert_close(got, want)
    assert _ctx(student, padded, tok, tmp_path).logits(student, batch).shape[-1] == V


def test_slice_vocab():
    x = torch.randn(2, 3, 10)
    assert M.slice_vocab(x, 7).shape == (2, 3, 7)
    assert M.slice_vocab(x, None) is x and M.slice_vocab(x, 10) is x and M.slice_vocab(x, 12) is x


def test_tokenizer_mismatch_is_reported_before_any_work(tmp_path):
    tok_a = _tokenizer(tmp_path, with_pad=True)
    tok_b = M.build_bpe_tokenizer(["completely different text, other merges 12345"] * 30, vocab_size=300)
    a = build_random_model("gpt2", tok_a, seed=1)
    b = build_random_model("gpt2", tok_b, seed=1)
    M.save_model(a, tok_a, tmp_path / "a")
    M.save_model(b, tok_b, tmp_path / "b")
    with pytest.raises(ModelError) as e:
        M.check_real_models(str(tmp_path / "a"), [str(tmp_path / "b")])
    msg = str(e.value)
    assert "tokenizers differ" in msg and "shared vocabulary" in msg and str(tmp_path / "b") in msg
    assert "only in teacher" in msg and "only in student" in msg
    # a built-in preset teacher has its own tokenizer: a real student cannot share it
    with pytest.raises(ConfigError, match="built-in preset"):
        M.check_real_models("gpt2-toy-s", [str(tmp_path / "b")])


def test_embedding_smaller_than_tokenizer_fails(tmp_path):
    tok = _tokenizer(tmp_path, with_pad=True)
    small = build_random_model("llama", tok, vocab_rows=len(tok) - 5)
    M.save_model(small, tok, tmp_path / "small")
    with pytest.raises(ModelError, match="embedding has .* rows but the shared tokenizer has"):
        M.check_real_models(str(tmp_path / "small"), [])


def test_pad_is_eos_when_missing_and_only_the_first_eos_is_a_target(tmp_path):
    tok = _tokenizer(tmp_path, with_pad=False)
    assert tok.pad_token_id == tok.eos_token_id  # GPT-2/Llama style
    exs = _examples(3)
    seqs = [encode_pair(tok, ex.prompt, ex.target, 128, 96) for ex in exs]
    batch = collate(seqs, tok.pad_token_id)
    eos = tok.eos_token_id
    for i, (p, r) in enumerate(seqs):
        n = len(p) + len(r)
        assert r[-1] == eos and eos not in r[:-1]
        labels = batch.labels[i]
        # the response's EOS is a trained target, predicted by the last real position
        assert int(labels[n - 2]) == eos
        assert int((labels == eos).sum()) == 1
        # what follows is padding: EOS ids in the input, but neither attended to nor a target
        assert (batch.input_ids[i, n:] == eos).all()
        assert (labels[n - 1:] == IGNORE).all() and (batch.attention_mask[i, n:] == 0).all()
        assert (labels[: len(p) - 1] == IGNORE).all()  # prompt tokens carry no loss


def test_tokenizer_without_eos_fails_clearly(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>").save_pretrained(tmp_path / "noeos")
    with pytest.raises(ModelError, match="no EOS token"):
        M.load_tokenizer(str(tmp_path / "noeos"))


def test_dtype_and_placement(tmp_path, saved):
    t_path, _ = saved["llama"]
    m = M.load_model(t_path, "bfloat16", "cpu")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    with pytest.raises(ConfigError, match="dtype"):
        M.load_model(t_path, "float8")
    M.check_placement("cpu", "same")
    M.check_placement("auto", "cpu")
    with pytest.raises(ConfigError, match="config key 'device': 'gpu' is not a device"):
        M.check_placement("gpu", "same")
    with pytest.raises(ConfigError, match="teacher_device"):
        M.check_placement("cpu", "elsewhere")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'cuda:1' needs CUDA"):
            M.check_placement("cpu", "cuda:1")
        with pytest.raises(ConfigError, match="config key 'device': 'cuda' needs CUDA"):
            M.check_placement("cuda", "same")


def test_kd_step_with_a_bf16_teacher_offloaded_to_cpu(saved, tmp_path):
    """--dtype bfloat16 --teacher-device cpu: the frozen teacher is loaded in bf16, the trained
    student keeps fp32 weights, and the divergence is computed in fp32."""
    t_path, s_path = saved["qwen2"]
    tok = M.load_tokenizer(t_path)
    teacher, student = M.load_model(t_path, "bfloat16", "cpu"), M.load_model(s_path)
    ctx = _ctx(student, teacher, tok, tmp_path)
    make_method("kd").train(ctx)
    assert math.isfinite(ctx.history[0]["loss"])
    assert next(student.parameters()).dtype == torch.float32
    assert next(teacher.parameters()).dtype == torch.bfloat16


def test_hub_names_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(S, "in_hub_cache", lambda name: False)
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        M.check_model_name("gpt2-xl", "--teacher")
    monkeypatch.setattr(S, "in_hub_cache", lambda name: True)
    M.check_model_name("gpt2-xl", "--teacher")  # cached: accepted without touching the network
    with pytest.raises(ModelError, match="does not exist"):
        M.check_model_name("/no/such/model", "--student")
    with pytest.raises(ConfigError, match="unknown model family"):
        build_random_model("bert", None)
