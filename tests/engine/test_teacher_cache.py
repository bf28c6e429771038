"""Teacher top-k cache (kdbench/teacher_cache.py, kdbench/teacher_store.py).

- compress/expand: exact at k = V, normalised, error falling with k, bounded by r log(V - k);
- at k = V the cached teacher gives the live teacher's values and student gradients for every
  divergence, chunked or not, at T != 1 (float32 storage: to 1e-6; float16, the default: to 1e-2,
  akl's head/tail split being the most sensitive to the rounding);
- through MethodContext: kd with the cache trains as kd without it; the cache is one stage per
  (teacher, example set, k), built once and read by two methods and two seeds (teacher forwards
  counted); a rollout is never served from it, even when its tokens equal a cached sequence.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench import divergences as D
from kdbench.chunked import LazyLogits, chunked_token_loss, token_fn_of
from kdbench.config import TrainConfig, train_key
from kdbench.data import Batch, collate
from kdbench.errors import ConfigError
from kdbench.method import MethodContext, make_method
from kdbench.models import build_word_tokenizer
from kdbench.sampling import SamplingConfig
from kdbench.task import TaskOptions
from kdbench.teacher_cache import TopKLogits, TopKTeacherCache, topk_compress, topk_error, topk_expand
from kdbench.teacher_store import local_stage
from tasks.toy import ToyTask

pytestmark = pytest.mark.usefixtures("one_thread")


def test_topk_round_trip_exact_at_full_k_and_error_falls_with_k():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 40, generator=g) * 3
    v, i, t = topk_compress(logits, 40)
    # float16 log-probs: relative error <= 2^-11 (0.008 nats on a log-prob of -16)
    torch.testing.assert_close(topk_expand(v, i, t, 40), torch.log_softmax(logits, -1), atol=1e-3, rtol=1e-3)
    mask = torch.ones(50)
    errs = [topk_error(logits, mask, k)["kl_mean"] for k in (2, 8, 20, 40)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-4 and errs[0] > 1e-2
    q = topk_expand(*topk_compress(logits, 8), 40)
    torch.testing.assert_close(q.exp().sum(-1), torch.ones(50))


def test_topk_error_matches_closed_form_and_bounds():
    # one row, V = 4, p = (0.5, 0.3, 0.15, 0.05), k = 2: p_hat = (0.5, 0.3, 0.1, 0.1)
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    q = torch.tensor([[0.25, 0.25, 0.25, 0.25]])  # the student
    e = topk_error(p.log(), torch.ones(1), 2, student_logits=q.log())
    kl = 0.15 * math.log(0.15 / 0.1) + 0.05 * math.log(0.05 / 0.1)
    assert e["kl_mean"] == pytest.approx(kl, rel=1e-3) and e["tail_mass_mean"] == pytest.approx(0.2, rel=1e-5)
    assert kl <= 0.2 * math.log(2)  # KL(p || p_hat) <= r log(V - k)
    # KL(p||q) - KL(p_hat||q) against a uniform student: the difference of the two entropies
    h = lambda x: -(x * x.log()).sum()  # noqa: E731
    p_hat = torch.tensor([0.5, 0.3, 0.1, 0.1])
    assert e["fkl_abs_err"] == pytest.approx(float(abs(h(p[0]) - h(p_hat))), abs=1e-4)  # fp16 log-probs
    # the gradient error: ||p_hat - p|| / ||q - p||
    assert e["grad_rel_err"] == pytest.approx(float((p_hat - p[0]).norm() / (q[0] - p[0]).norm()), rel=1e-3)
    full = topk_error(p.log(), torch.ones(1), 4, student_logits=q.log(), dtype=torch.float32)
    assert full["kl_mean"] < 1e-6 and full["fkl_abs_err"] < 1e-5 and full["grad_rel_err"] < 1e-3


# every divergence a method reads the teacher with, with non-default settings
CASES = [(D.forward_kl, {}), (D.reverse_kl, {}), (D.js, {"beta": 0.3}), (D.generalized_jsd, {"beta": 0.7}),
         (D.tvd, {}), (D.skew_forward_kl, {"alpha": 0.3}), (D.skew_reverse_kl, {"alpha": 0.2}),
         (D.alpha_beta, {"alpha": 0.3, "beta": 0.6}), (D.akl, {"mu": 0.7})]
B, Lq, H, V = 3, 9, 8, 29


def _batch_and_teacher(seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [(torch.randint(0, V, (3,), generator=g).tolist(), torch.randint(0, V, (n,), generator=g).tolist())
            for n in (5, 2, 6)]
    batch = collate(seqs, 0)
    L = batch.input_ids.shape[1]
    teacher = LazyLogits(torch.randn(B, L, H, generator=g) * 2, torch.randn(V + 3, H, generator=g), None, V)
    hs = torch.randn(B, L, H, generator=g).requires_grad_()
    ws = torch.randn(V + 3, H, generator=g).requires_grad_()
    return batch, teacher, hs, ws


@pytest.mark.parametrize("store, tol", [("float32", 1e-6), ("float16", 1e-2)])  # fp16: 2^-11 per log-prob
@pytest.mark.parametrize("fn, kw", CASES, ids=[c[0].__name__ for c in CASES])
def test_cached_teacher_at_full_k_gives_the_live_values_and_gradients(fn, kw, store, tol):
    batch, teacher, hs, ws = _batch_and_teacher()
    cache = TopKTeacherCache(V, V, store)
    cache.add(batch, teacher, chunk=4)
    cached = cache.lookup(batch, "cpu")
    assert isinstance(cached, TopKLogits)
    mask, token_fn = batch.loss_mask, token_fn_of(fn)
    for chunk in (0, 4):  # the unchunked path (full logits) and the chunked one
        for T in (1.0, 2.0):
            got = []
            for t in (teacher, cached):
                s = LazyLogits(hs, ws, None, V)
                if chunk:
                    val = chunked_token_loss(token_fn, s, t, mask, temperature=T, chunk=chunk, **kw)
                else:
                    val = fn(s.full() / T, t.full() / T, mask, **kw)
                gh, gw = torch.autograd.grad(val, (hs, ws))
                got.append((val.detach(), gh, gw))
            for a, b in zip(got[0], got[1]):
                assert float((a - b).norm() / a.norm().clamp(min=1e-30)) < tol, (fn.__name__, chunk, T)


def test_cached_teacher_at_small_k_is_an_approximation_and_lookup_needs_exact_rows():
    batch, teacher, hs, ws = _batch_and_teacher()
    cache = TopKTeacherCache(3, V)
    cache.add(batch, teacher)
    s = LazyLogits(hs, ws, None, V)
    exact = D.forward_kl(s.full(), teacher.full(), batch.loss_mask)
    approx = D.forward_kl(s.full(), cache.lookup(batch, "cpu").full(), batch.loss_mask)
    assert abs(float((exact - approx).detach())) > 1e-3  # k = 3 of 29 loses mass: the test above would see a dropped k
    # another row (one token changed) is not in the cache
    other = Batch(batch.input_ids.clone(), batch.attention_mask, batch.labels)
    other.input_ids[1, 0] = (other.input_ids[1, 0] + 1) % V
    assert cache.lookup(other, "cpu") is None


# -- through the method context ------------------------------------------------------------------

@pytest.fixture(scope="module")
def world():
    task = ToyTask(TaskOptions(extra={"n_creatures": 4, "n_train": 32, "n_dev": 4, "n_test": 4, "pretrain_docs": 10}))
    return SimpleNamespace(tok=build_word_tokenizer(task.vocabulary()), exs=task.examples("train"))


def _gpt2(tok, seed, std):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=40, n_embd=32, n_layer=1, n_head=2,
                                      initializer_range=std, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id))


def _ctx(world, run_dir, stage_root=None, seed=1234, steps=6, teacher=None, **train):
    cfg = TrainConfig(steps=steps, batch_size=8, lr=1e-2, schedule="constant", log_every=1, seed=seed, **train)
    teacher = teacher or _gpt2(world.tok, 7, 0.5).eval()
    ctx = MethodContext(student=_gpt2(world.tok, 1, 0.02), teacher=teacher,
                        tokenizer=world.tok, train_examples=world.exs, train_cfg=cfg, max_length=40,
                        max_prompt_length=20, run_dir=run_dir, device="cpu", method_name="t", progress=False,
                        sampling=SamplingConfig(max_new_tokens=6),
                        teacher_cache_fn=local_stage(stage_root, teacher) if stage_root else None)
    ctx.vocab_size = len(world.tok)
    return ctx


def test_kd_with_full_topk_cache_matches_the_live_teacher(world, tmp_path):
    live = _ctx(world, tmp_path / "live")
    make_method("kd").train(live)
    vocab = len(world.tok)
    cached = _ctx(world, tmp_path / "cached", teacher_cache="topk", teacher_cache_k=vocab)
    make_method("kd").train(cached)
    for a, b in zip(live.history, cached.history):
        assert math.isclose(a["loss"], b["loss"], rel_tol=5e-3), (a, b)  # fp16 log-probs in the cache
    # the teacher read each training example once, not 6 steps x 8 rows
    n_train_tokens = int(live.encode(world.exs).attention_mask.sum())
    assert cached.counters["teacher_forward_tokens"] == n_train_tokens
    # kd's deprecated method-level setting still turns the same cache on
    old = _ctx(world, tmp_path / "old")
    make_method("kd", {"teacher_cache": "topk", "topk": vocab}).train(old)
    assert [h["loss"] for h in old.history] == [h["loss"] for h in cached.history]
    assert old.counters["teacher_forward_tokens"] == n_train_tokens


def test_one_stage_is_built_once_and_read_by_two_methods_and_two_seeds(world, tmp_path):
    root = tmp_path / "stages"
    teacher = _gpt2(world.tok, 7, 0.5).eval()
    runs = [("kd", 1), ("fkl", 2), ("tvd", 1), ("taid", 2)]
    ctxs = []
    for name, seed in runs:
        ctx = _ctx(world, tmp_path / f"{name}{seed}", root, seed=seed, steps=2, teacher=teacher,
                   teacher_cache="topk", teacher_cache_k=16)
        make_method(name, {"data": "gold"} if name == "tvd" else None).train(ctx)
        ctxs.append(ctx)
    assert len(list(root.glob("teacher-topk-*"))) == 1
    built = ctxs[0].counters["teacher_forward_tokens"]
    assert built == int(ctxs[0].encode(world.exs).attention_mask.sum())
    for ctx in ctxs[1:]:  # every later method and seed: no teacher forward at all
        assert ctx.counters.get("teacher_forward_tokens", 0) == 0 and ctx.counters["teacher_cache_tokens"] > 0
    # another k is another stage
    ctx = _ctx(world, tmp_path / "k8", root, steps=1, teacher=teacher, teacher_cache="topk", teacher_cache_k=8)
    make_method("kd").train(ctx)
    assert len(list(root.glob("teacher-topk-*"))) == 2 and ctx.counters["teacher_forward_tokens"] == built
    # and so is another teacher at the same k, even one that differs in a single weight: the key holds
    # a fingerprint of its weights, so it never reads the first teacher's logits
    other = _gpt2(world.tok, 7, 0.5).eval()
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    ctx = _ctx(world, tmp_path / "other", root, steps=1, teacher=other, teacher_cache="topk", teacher_cache_k=8)
    make_method("kd").train(ctx)
    assert len(list(root.glob("teacher-topk-*"))) == 3 and ctx.counters["teacher_forward_tokens"] == built
    # the same weights in another object: the same stage
    same = _gpt2(world.tok, 7, 0.5).eval()
    ctx = _ctx(world, tmp_path / "same", root, steps=1, teacher=same, teacher_cache="topk", teacher_cache_k=8)
    make_method("kd").train(ctx)
    assert len(list(root.glob("teacher-topk-*"))) == 3 and ctx.counters.get("teacher_forward_tokens", 0) == 0


def test_rollouts_are_never_read_from_the_cache(world, tmp_path):
    ctx = _ctx(world, tmp_path, tmp_path / "stages", teacher_cache="topk", teacher_cache_k=len(world.tok))
    exs = ctx.guided_examples()[:4]
    fixed = ctx.encode(exs)
    assert isinstance(ctx.teacher_outputs(fixed), TopKLogits)
    # the very same tokens as a rollout (collate, as rollout_batch builds it): the live teacher
    same = collate([encode for encode in _pairs(ctx, exs)], ctx.pad_id)
    assert torch.equal(same.input_ids, fixed.input_ids)
    before = ctx.counters["teacher_forward_tokens"]
    assert not isinstance(ctx.teacher_outputs(same), TopKLogits)
    assert ctx.counters["teacher_forward_tokens"] == before + int(same.attention_mask.sum())
    # a target given explicitly (a student's sample through encode) is not a fixed sequence either
    assert not isinstance(ctx.teacher_outputs(ctx.encode(exs, [ex.target for ex in exs])), TopKLogits)


def _pairs(ctx, exs):
    from kdbench.data import encode_pair
    return [encode_pair(ctx.tokenizer, ex.prompt, ex.target, ctx.max_length, ctx.max_prompt_length) for ex in exs]


@pytest.mark.parametrize("lmbda", [1.0, 0.0])
def test_gkd_reads_the_cache_only_on_its_off_policy_steps(world, tmp_path, lmbda):
    ctx = _ctx(world, tmp_path, tmp_path / "stages", steps=2, teacher_cache="topk", teacher_cache_k=16)
    make_method("gkd", {"lmbda": lmbda}).train(ctx)
    if lmbda == 1.0:  # every step on-policy: the cache is never built nor read
        assert ctx.counters.get("teacher_cache_tokens", 0) == 0 and not list((tmp_path / "stages").glob("*"))
    else:
        assert ctx.counters["teacher_cache_tokens"] > 0
        assert ctx.counters["teacher_forward_tokens"] == int(ctx.encode(ctx.guided_examples()).attention_mask.sum())


@pytest.mark.parametrize("name, cfg, chunked", [("kd", None, "off"), ("kd", None, "on"), ("kd", {"temperature": 2.0}, "on"),
                                               ("rkl", None, "off"), ("tvd", {"data": "gold"}, "on")])
def test_full_cache_is_the_exact_teacher_for_every_divergence(world, tmp_path, name, cfg, chunked):
    """teacher_cache=full keeps every token's log-prob in float32: kd (also tempered), reverse KL (which
    weights the tail by the student) and TVD train as on the live teacher up to float rounding (a float16
    or top-k store is off by ~1e-4 or far more), dense or a chunk of rows at a time, and the teacher reads
    each training example once."""
    live = _ctx(world, tmp_path / "live", chunked_loss=chunked)
    make_method(name, cfg).train(live)
    full = _ctx(world, tmp_path / "full", tmp_path / "stages", teacher_cache="full", chunked_loss=chunked)
    make_method(name, cfg).train(full)
    for a, b in zip(live.history, full.history, strict=True):
        assert math.isclose(a["loss"], b["loss"], rel_tol=2e-6, abs_tol=1e-7), (a, b)
    assert full.counters["teacher_cache_tokens"] > 0
    assert full.counters["teacher_forward_tokens"] == int(live.encode(world.exs).attention_mask.sum())
    stored = TopKTeacherCache.load(next((tmp_path / "stages").glob("teacher-topk-*")) / "topk.pt")
    assert (stored.k, stored.vocab, stored.dtype) == (len(world.tok),) * 2 + ("float32",)


def test_weights_fingerprint_reads_every_tensor_kind():
    from kdbench.teacher_store import weights_fingerprint

    m = torch.nn.Linear(3, 2)
    m.register_buffer("scale", torch.tensor(2.0))  # 0-dim (Gemma's embed_scale)
    m.register_buffer("bf", torch.ones(2, dtype=torch.bfloat16))
    a = weights_fingerprint(m)
    assert a == weights_fingerprint(m)
    m.scale.fill_(3.0)
    b = weights_fingerprint(m)
    m.bf[0] = 2
    assert len({a, b, weights_fingerprint(m)}) == 3
    with torch.device("meta"):
        meta = torch.nn.Linear(3, 2)
    assert weights_fingerprint(meta) != weights_fingerprint(torch.nn.Linear(3, 2))  # no data: names and shapes


def test_kd_deprecated_topk_flag_does_not_replace_the_full_cache(world, tmp_path):
    """method_config.kd.teacher_cache=topk under train.teacher_cache=full: the exact store stays (float32,
    every token), not kd's old float16 top-k one."""
    ctx = _ctx(world, tmp_path, tmp_path / "stages", steps=1, teacher_cache="full")
    make_method("kd", {"teacher_cache": "topk", "topk": 8}).train(ctx)
    stored = TopKTeacherCache.load(next((tmp_path / "stages").glob("teacher-topk-*")) / "topk.pt")
    assert (stored.k, stored.dtype) == (len(world.tok), "float32")


def test_full_cache_refuses_a_large_vocabulary(world, tmp_path, monkeypatch):
    import kdbench.method as method_module

    monkeypatch.setattr(method_module, "FULL_CACHE_MAX_VOCAB", len(world.tok) - 1)
    ctx = _ctx(world, tmp_path, tmp_path / "stages", steps=1, teacher_cache="full")
    with pytest.raises(ConfigError, match="teacher_cache=full .* use train.teacher_cache=topk"):
        make_method("kd").train(ctx)


def test_cache_settings_are_validated_and_in_the_key_only_when_on():
    with pytest.raises(ConfigError, match="teacher_cache"):
        TrainConfig(teacher_cache="lru")
    with pytest.raises(ConfigError, match="teacher_cache_k"):
        TrainConfig(teacher_cache="topk", teacher_cache_k=0)
    with pytest.raises(ConfigError, match="teacher_cache"):
        make_method("kd", {"teacher_cache": "lru"})
    assert "teacher_cache" not in train_key(TrainConfig()) and "teacher_cache_k" not in train_key(TrainConfig())
    on = TrainConfig(teacher_cache="topk", teacher_cache_k=32)
    assert train_key(on)["teacher_cache_k"] == 32
    assert train_key(on, teacher=False) == train_key(TrainConfig())  # an SFT student is the same without it
    full = train_key(TrainConfig(teacher_cache="full", teacher_cache_k=32))
    assert full["teacher_cache"] == "full" and "teacher_cache_k" not in full  # k means nothing when all are kept


# every method that reads the teacher on fixed responses reads the cache (no code of its own); the
# on-policy ones never do
OFF_POLICY = [("kd", None), ("fkl", None), ("rkl", None), ("abkd", None), ("akl", None), ("taid", None),
              ("js", {"data": "gold"}), ("tvd", {"data": "teacher"}), ("seqkd", {"kd_ratio": 0.5}),
              ("gkd", {"lmbda": 0.0}), ("distillm", {"dev_size": 4, "init_threshold": 0.0})]
ON_POLICY = [("js", None), ("single_step", None), ("minillm", {"lm_coef": 0.0})]


@pytest.mark.parametrize("name, overrides", OFF_POLICY + ON_POLICY,
                         ids=[f"{n}-{'off' if (n, o) in OFF_POLICY else 'on'}" for n, o in OFF_POLICY + ON_POLICY])
def test_every_off_policy_method_reads_the_cache_and_no_on_policy_one(world, tmp_path, name, overrides):
    ctx = _ctx(world, tmp_path, tmp_path / "stages", steps=2, teacher_cache="topk", teacher_cache_k=16)
    samples = [ex.__class__(**{**ex.__dict__, "meta": {**ex.meta, "target": world.exs[-1 - i].target}})
               for i, ex in enumerate(world.exs)]  # "teacher samples": other examples' answers
    ctx._teacher_samples_fn = lambda: samples
    make_method(name, overrides).train(ctx)
    assert (ctx.counters.get("teacher_cache_tokens", 0) > 0) == ((name, overrides) in OFF_POLICY)
