"""kdbench.lean: the fused tanh-GELU and the lean decoder compute what transformers' forward computes.

The lean decoder is checked step by step against transformers' own path (kdbench.sampling._Stepper on a
static cache) for every architecture file and the options it claims (grouped-query attention, biases,
untied heads, scaled RoPE, left padding), and whole samples must draw the same tokens. Anything it does
not cover must fall back to transformers' forward, never decode wrongly."""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from kdbench import sampling
from kdbench.lean import fuse_activations, lean_stepper
from kdbench.lean.activations import FusedTanhGELU
from kdbench.lean.decode import LeanStepper, unsupported
from kdbench.sampling import SamplingConfig, sample

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, EOS, V = 0, 1, 40
PROMPTS = [[3, 4, 5], [6], [7, 8, 9, 10, 11, 12, 13], [2, 2], [9, 3, 3, 3, 3]]  # ragged: left padding


def gpt2(seed=0, **over):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, n_positions=64, n_embd=24, n_layer=2, n_head=3, initializer_range=0.3,
               bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
    return GPT2LMHeadModel(GPT2Config(**{**cfg, **over})).eval()


def llama(seed=0, **over):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3, bos_token_id=EOS,
               eos_token_id=EOS, pad_token_id=PAD)
    return LlamaForCausalLM(LlamaConfig(**{**cfg, **over})).eval()


VARIANTS = {
    "gpt2": lambda: gpt2(),
    "gpt2-untied-head": lambda: gpt2(tie_word_embeddings=False),
    "gpt2-fused-gelu": lambda: fuse_activations(gpt2()),
    "llama-gqa": lambda: llama(),
    "llama-mha-one-layer": lambda: llama(num_key_value_heads=4, num_hidden_layers=1),
    "llama-mqa-biases-untied": lambda: llama(num_key_value_heads=1, attention_bias=True, mlp_bias=True,
                                             tie_word_embeddings=False),
    "llama-linear-rope-theta": lambda: llama(rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                              "rope_theta": 500.0}),
}


def _randomise_biases(model):
    """Biases start at zero: give them values, so a dropped bias cannot pass unnoticed."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or name.endswith("ln_1.weight"):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lean_steps_equal_transformers_steps(variant):
    model = _randomise_biases(VARIANTS[variant]())
    ids, att = sampling._left_pad(PROMPTS, PAD)
    lean = lean_stepper(model, ids, att, max_new=6)
    assert isinstance(lean, LeanStepper), unsupported(model)
    ref = sampling._Stepper(model, ids, att, max_new=6)
    assert lean.logits.dtype == torch.float32 and lean.logits.shape == ref.logits.shape == (len(PROMPTS), V)
    assert float(ref.logits.detach().std()) > 0.5  # logits that differ from row to row and token to token
    assert torch.isfinite(lean.k).all()  # padded prompt positions (no key to attend to) give zeros, not NaN
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        torch.testing.assert_close(lean.logits, ref.logits, rtol=1e-5, atol=1e-5, msg=f"step {step}")
        if step < 5:
            tok = torch.randint(2, V, (len(PROMPTS),), generator=g)
            lean.step(tok)
            ref.step(tok)


def test_padded_prompt_positions_cannot_poison_the_cache_on_a_backend_that_returns_nan(monkeypatch):
    """sdpa gives NaN for a query whose keys are all masked on some backends (MPS before torch 2.9): with such
    an attention, left-padded rows must still decode exactly (their padded positions attend to themselves)."""
    import types

    from kdbench.lean import decode

    def nan_attention(q, k, v, attn_mask=None, enable_gqa=False):
        if enable_gqa:
            k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], 1) for x in (k, v))
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
        return scores.softmax(-1) @ v  # all -inf: NaN

    monkeypatch.setattr(decode, "F", types.SimpleNamespace(scaled_dot_product_attention=nan_attention))
    model = _randomise_biases(llama())
    ids, att = sampling._left_pad(PROMPTS, PAD)
    lean = lean_stepper(model, ids, att, max_new=3)
    ref = sampling._Stepper(model, ids, att, max_new=3)
    for step in range(3):
        torch.testing.assert_close(lean.logits, ref.logits.detach(), rtol=1e-5, atol=1e-5, msg=f"step {step}")
        tok = torch.full((len(PROMPTS),), 4)
        lean.step(tok)
        ref.step(tok)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_samples_draw_the_same_tokens_on_both_paths(arch, monkeypatch):
    student = _randomise_biases(gpt2(1) if arch == "gpt2" else llama(1))
    teacher = _randomise_biases(gpt2(2) if arch == "gpt2" else llama(2))
    cfg = SamplingConfig(max_new_tokens=20, temperature=0.9, no_repeat_ngram_size=3)
    built = []
    real = sampling.lean_stepper
    def spy(*a, **k):
        out = real(*a, **k)
        built.append(isinstance(out, LeanStepper))
        return out

    monkeypatch.setattr(sampling, "lean_stepper", spy)
    lean_plain = sample(student, PROMPTS, cfg, EOS, PAD, seed=3)
    lean_mixed = sample(student, PROMPTS, cfg, EOS, PAD, seed=3, mix_model=teacher, mix_alpha=0.4)
    assert built == [True] * 3  # the lean decoder ran: the student twice, the teacher once
    monkeypatch.setattr(sampling, "lean_stepper", lambda *a, **k: None)
    hf_plain = sample(student, PROMPTS, cfg, EOS, PAD, seed=3)
    hf_mixed = sample(student, PROMPTS, cfg, EOS, PAD, seed=3, mix_model=teacher, mix_alpha=0.4)
    assert lean_plain.response_ids == hf_plain.response_ids
    assert lean_mixed.response_ids == hf_mixed.response_ids
    assert sum(map(len, lean_mixed.response_ids)) > 40
    for a, b in ((lean_mixed.student_logp, hf_mixed.student_logp), (lean_mixed.teacher_logp, hf_mixed.teacher_logp),
                 (lean_mixed.mix_logp, hf_mixed.mix_logp)):
        torch.testing.assert_close(torch.tensor(sum(a, [])), torch.tensor(sum(b, [])), rtol=1e-5, atol=1e-5)


def test_what_the_lean_decoder_does_not_cover_falls_back_to_transformers():
    ids, att = sampling._left_pad(PROMPTS, PAD)
    assert unsupported(gpt2()) is None and unsupported(llama()) is None
    cases = {
        "inverse-layer-idx scaling": gpt2(scale_attn_by_inverse_layer_idx=True),
        "reordered attention": gpt2(reorder_and_upcast_attn=True),
        "dynamic RoPE": llama(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
        "another architecture": torch.nn.Linear(2, 2),
    }
    drop = gpt2(attn_pdrop=0.5)
    drop.train()
    cases["dropout in training mode"] = drop
    attn_drop = llama(attention_dropout=0.3)  # a rate in the config, no Dropout module
    attn_drop.train()
    cases["Llama attention dropout in training mode"] = attn_drop
    cut = llama()
    cut.config.num_hidden_layers = 1  # transformers would run layers[:1]
    cases["fewer layers in the config than in the model"] = cut
    sharded = gpt2()
    sharded.transformer.h[0].mlp.c_fc.weight.ds_id = 7  # how DeepSpeed ZeRO-3 marks a partitioned weight
    cases["DeepSpeed-partitioned weights"] = sharded
    wrapped = llama()
    wrapped.model.layers[1].mlp.up_proj = torch.nn.Sequential(wrapped.model.layers[1].mlp.up_proj)
    cases["a wrapped projection"] = wrapped
    renorm = gpt2()
    renorm.transformer.wte.max_norm = 1.0  # nn.Embedding renormalising rows on lookup
    cases["an embedding with max_norm"] = renorm
    for what, model in cases.items():
        assert unsupported(model) is not None, what
        assert lean_stepper(model, ids, att, 4) is None, what


def test_a_peft_model_samples_through_transformers_with_its_adapters():
    from peft import LoraConfig, get_peft_model

    base = gpt2()
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False))
    assert "peft" in unsupported(model)
    ids, att = sampling._left_pad(PROMPTS, PAD)
    assert sampling._stepper(model, ids, att, 4).__class__ is sampling._Stepper
    with torch.no_grad(), model.disable_adapter():
        plain = base(input_ids=ids, attention_mask=att).logits
    adapted = sampling._stepper(model, ids, att, 4).logits
    assert not torch.allclose(adapted, plain[:, -1], atol=1e-3)  # the adapters are in the logits


def test_fused_gelu_keeps_the_outputs_gradients_and_saved_config(tmp_path):
    from transformers.activations import NewGELUActivation

    slow, fast = gpt2(), fuse_activations(gpt2())
    assert sum(isinstance(m, NewGELUActivation) for m in slow.modules()) == 2
    assert sum(isinstance(m, NewGELUActivation) for m in fast.modules()) == 0
    assert sum(isinstance(m, FusedTanhGELU) for m in fast.modules()) == 2
    ids = torch.randint(2, V, (3, 9), generator=torch.Generator().manual_seed(1))
    ls, lf = slow(input_ids=ids).logits, fast(input_ids=ids).logits
    torch.testing.assert_close(lf, ls, rtol=1e-5, atol=1e-6)
    ls.logsumexp(-1).sum().backward()
    lf.logsumexp(-1).sum().backward()
    for (name, a), b in zip(slow.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    fast.save_pretrained(tmp_path)
    assert GPT2Config.from_pretrained(tmp_path).activation_function == "gelu_new"  # the model file is unchanged
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(FusedTanhGELU()(x), NewGELUActivation()(x), rtol=1e-6, atol=1e-7)
    relu = gpt2(activation_function="relu")
    assert [type(m) for m in fuse_activations(relu).modules()] == [type(m) for m in gpt2(
        activation_function="relu").modules()]


def test_loaded_and_preset_models_come_fused(tmp_path):
    from kdbench.models import build_preset_model, build_word_tokenizer, load_model

    tok = build_word_tokenizer(["a", "b", "c"])
    model = build_preset_model("gpt2-toy-xs", tok, 16, seed=0)
    assert any(isinstance(m, FusedTanhGELU) for m in model.modules())
    model.save_pretrained(tmp_path)
    assert any(isinstance(m, FusedTanhGELU) for m in load_model(str(tmp_path)).modules())
