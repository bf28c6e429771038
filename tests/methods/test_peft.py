"""LoRA students (kdbench.adapters, `peft.method: lora`): kd and minillm on a tiny Llama lower their
objective while only adapter weights move; the adapter saves and loads back to the same function
(plain and merged); a resumed LoRA run ends bit-identical to an uninterrupted one; config errors
name their key.

Same toy setup as test_methods: the toy world's word tokenizer, a peaked random GPT-2 teacher, and
here the `llama-toy-xs` preset (1 layer, 32 wide) as the student, LoRA r 8 on q/v (peft's Llama
default), dropout off so a rollout and its training forward are the same function.
"""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from kdbench import adapters
from kdbench import models as M
from kdbench.config import PeftConfig, TrainConfig
from kdbench.data import lm_blocks
from kdbench.divergences import forward_kl, reverse_kl
from kdbench.errors import ConfigError, KdbenchError
from kdbench.method import MethodContext, cross_entropy, gather_logprobs, make_method
from kdbench.models import build_word_tokenizer
from kdbench.plugins import load_plugins
from kdbench.sampling import SamplingConfig
from kdbench.task import TaskOptions
from kdbench.trainer import LossOutput, Trainer
from fixtures import build_random_model
from tasks.toy import ToyTask

load_plugins()
pytestmark = pytest.mark.usefixtures("one_thread")

MAXLEN, MAXPROMPT, NEW = 40, 20, 8
LORA = PeftConfig(method="lora", r=8, alpha=16, dropout=0.0)  # peft's Llama default targets: q_proj, v_proj
# every linear layer of the block: a 1-layer student moves its output distribution mostly through the MLP
ALL = PeftConfig(method="lora", r=8, alpha=16, dropout=0.0,
                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@pytest.fixture(scope="module")
def world():
    task = ToyTask(TaskOptions(extra={"n_creatures": 4, "n_train": 64, "n_dev": 4, "n_test": 4, "pretrain_docs": 40}))
    tok = build_word_tokenizer(task.vocabulary())
    return SimpleNamespace(tok=tok, exs=task.examples("train"), blocks=lm_blocks(tok, task.pretrain_texts(), MAXLEN))


@pytest.fixture(scope="module")
def teacher(world):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(7)
    cfg = GPT2Config(vocab_size=len(world.tok), n_positions=MAXLEN, n_embd=32, n_layer=1, n_head=2,
                     initializer_range=0.5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=world.tok.eos_token_id, eos_token_id=world.tok.eos_token_id,
                     pad_token_id=world.tok.pad_token_id)
    return GPT2LMHeadModel(cfg).eval()  # peaked next-token distributions


def lora_llama(world, seed: int = 0, cfg: PeftConfig = LORA):
    """A 1-layer, 32-wide Llama (2 heads, 1 KV head) with a LoRA adapter. Init std 0.5 stands in for a
    pretrained student: at std 0.02 the frozen output layer keeps every distribution near uniform, and
    no adapter can move the divergence (measured: forward KL 2.74 -> 2.67 after 15 steps)."""
    base = build_random_model("llama", world.tok, hidden=32, layers=1, n_positions=MAXLEN, init_std=0.5, seed=1)
    return adapters.wrap(base, cfg, seed)


def make_ctx(world, teacher, tmp_path, steps: int, lr: float = 3e-2):
    """kd / minillm context whose student adapts every linear layer (ALL)."""
    train = TrainConfig(steps=steps, batch_size=8, lr=lr, schedule="constant", log_every=1, seed=0)
    return MethodContext(student=lora_llama(world, cfg=ALL), teacher=teacher, tokenizer=world.tok, train_examples=world.exs,
                         train_cfg=train, max_length=MAXLEN, max_prompt_length=MAXPROMPT, run_dir=tmp_path,
                         pretrain_blocks=world.blocks, sampling=SamplingConfig(max_new_tokens=NEW), device="cpu",
                         method_name="test", progress=False)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_only_adapters_moved(before: dict, model) -> None:
    after = model.state_dict()
    moved = {k for k, v in before.items() if not torch.equal(v, after[k])}
    lora = {k for k in before if "lora_" in k}
    assert lora and moved, "nothing trained"
    assert moved <= lora, f"base weights changed: {sorted(moved - lora)[:5]}"
    # lora_B starts at zero (the adapter starts as the identity); every B trained away from it
    assert all(k in moved for k in lora if "lora_B" in k)


def test_lora_wraps_q_and_v_and_counts_trainable_parameters(world):
    base = M.build_preset_model("llama-toy-xs", world.tok, MAXLEN, seed=1)
    assert type(base).__name__ == "LlamaForCausalLM"
    model = adapters.wrap(base, LORA, seed=0)
    counts = adapters.parameter_counts(model)
    hidden, kv = 32, 32 // 2  # one KV head of a 2-head, 32-wide layer: v_proj is 32 -> 16
    expected = 8 * (hidden + hidden) + 8 * (hidden + kv)  # r x (in + out) for q_proj and v_proj
    assert counts["trainable"] == expected
    assert counts["total"] == sum(p.numel() for p in model.parameters()) > 20 * expected


def test_kd_with_lora_lowers_forward_kl_and_updates_only_the_adapter(world, teacher, tmp_path):
    ctx = make_ctx(world, teacher, tmp_path, steps=15)

    @torch.no_grad()
    def objective():
        b = ctx.encode(world.exs[:24])
        return float(forward_kl(ctx.logits(ctx.student, b), ctx.teacher_logits(b), b.loss_mask))

    before_w, before = snapshot(ctx.student), objective()
    make_method("kd").train(ctx)
    assert all(math.isfinite(h["loss"]) for h in ctx.history)
    assert objective() < 0.8 * before  # measured 6.40 -> 4.09
    assert_only_adapters_moved(before_w, ctx.student)


def test_minillm_with_lora_samples_through_the_adapter_and_lowers_reverse_kl(world, teacher, tmp_path):
    ctx = make_ctx(world, teacher, tmp_path, steps=16)

    @torch.no_grad()
    def objective(seed=321):  # exact token-level KL(q || p) on the student's own samples
        b = ctx.rollout_batch(ctx.sample(ctx.student, world.exs[:32], seed=seed))
        return float(reverse_kl(ctx.logits(ctx.student, b), ctx.teacher_logits(b), b.loss_mask))

    before_w, before = snapshot(ctx.student), objective()
    make_method("minillm").train(ctx)
    assert ctx.counters["rollouts"] == 32 and ctx.counters["generated_tokens"] > 0
    assert objective() < 0.8 * before  # measured 6.82 -> 4.47
    assert_only_adapters_moved(before_w, ctx.student)
    # rollouts come from the adapted model: the same seed gives what the merged model samples, and
    # not what the base model (adapter off) samples
    exs = world.exs[:16]
    got = ctx.sample(ctx.student, exs, seed=3).response_ids
    merged = copy.deepcopy(ctx.student).merge_and_unload()
    assert ctx.sample(merged, exs, seed=3).response_ids == got
    with ctx.student.disable_adapter():
        assert ctx.sample(ctx.student, exs, seed=3).response_ids != got
    # and the round's old log-probs are the adapted model's too
    store = make_method("minillm").make_round(ctx, exs, seed=3)
    with torch.no_grad():
        adapted = gather_logprobs(ctx.logits(merged, store), store.labels)
    mask = store.loss_mask > 0
    torch.testing.assert_close(store.extras["old_logp"][mask], adapted[mask], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("merged", [False, True])
def test_saved_adapter_loads_back_to_the_same_model(world, tmp_path, merged):
    base_dir = tmp_path / "base"
    M.save_model(M.build_preset_model("llama-toy-xs", world.tok, MAXLEN, seed=1), world.tok, base_dir)
    model = adapters.wrap(M.load_model(str(base_dir)), LORA, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: B != 0, so the adapter changes the function
    b = M.load_tokenizer(str(base_dir))(["ant bear cat"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = model(input_ids=b).logits
        plain = M.load_model(str(base_dir))(input_ids=b).logits
    path = adapters.save(model, world.tok, tmp_path / "cell", str(base_dir), merged=merged)
    assert (tmp_path / "cell" / "adapter" / "adapter_config.json").exists()
    assert path.name == ("model" if merged else "adapter")
    loaded = M.load_model(str(path))
    assert not any("lora_" in k for k in loaded.state_dict())  # evaluation sees one plain model
    with torch.no_grad():
        got = loaded(input_ids=b).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, want, atol=1e-3)


def test_resumed_lora_run_equals_an_uninterrupted_one(world, tmp_path):
    data = lambda: (lm_batch_of(world, i) for i in range(100))  # noqa: E731
    cfg = TrainConfig(steps=6, batch_size=8, lr=1e-2, checkpoint_every=2, warmup_steps=2, log_every=1)

    def loss_for(model):
        return lambda b: LossOutput(cross_entropy(model(input_ids=b.input_ids).logits, b.labels))

    ref = lora_llama(world)
    ref_hist = Trainer(cfg, None, progress=False).fit(ref, loss_for(ref), data())

    class Stop(Exception):
        pass

    def stopping():
        for i, b in enumerate(data()):
            if i == 5:
                raise Stop
            yield b

    part = lora_llama(world)
    with pytest.raises(Stop):
        Trainer(cfg, tmp_path, progress=False).fit(part, loss_for(part), stopping())
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    trainable = {n for n, p in part.named_parameters() if p.requires_grad}
    assert set(saved) == trainable and all("lora_" in k for k in saved)  # frozen base weights are not copied
    wider = adapters.wrap(build_random_model("llama", world.tok, hidden=32, layers=1, n_positions=MAXLEN, seed=1),
                          PeftConfig(method="lora", r=8, target_modules=["q_proj", "v_proj", "o_proj"]), 0)
    with pytest.raises(KdbenchError, match="does not match this adapter"):
        adapters.load_checkpoint_state(wider, saved)
    resumed = lora_llama(world, seed=99)  # another adapter init: everything must come from the checkpoint
    hist = Trainer(cfg, tmp_path, progress=False).fit(resumed, loss_for(resumed), data())
    assert [h["loss"] for h in hist] == [h["loss"] for h in ref_hist]
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def lm_batch_of(world, i: int):
    from kdbench.data import lm_batch

    n = len(world.blocks)
    return lm_batch(world.blocks[torch.arange(8 * i, 8 * i + 8) % n])


@pytest.mark.parametrize("kwargs, key", [({"method": "qlora"}, "peft.method"), ({"r": 0}, "peft.r"),
                                         ({"alpha": 0}, "peft.alpha"), ({"dropout": 1.0}, "peft.dropout"),
                                         ({"target_modules": ["auto", "q_proj"]}, "peft.target_modules")])
def test_bad_peft_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        PeftConfig(**kwargs)


def test_unknown_target_modules_are_a_config_error(world):
    cfg = PeftConfig(method="lora", target_modules=["no_such_proj"])
    with pytest.raises(ConfigError, match="peft.target_modules"):
        adapters.wrap(M.build_preset_model("llama-toy-xs", world.tok, MAXLEN, seed=1), cfg, 0)
