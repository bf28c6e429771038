"""Every method's logged loss at step 1 equals a value computed here from the formula.

Each test trains one step on a fixed toy batch and compares the trainer's first history record
(the loss and every logged term) with an independent float64 computation from full forward passes
of a copy of the initial student: the divergences are written out from log-softmaxes here, the
MiniLLM round (importance weights, rewards, advantages, whitening, PPO clip) is rebuilt by loops.
Only the batch (gold tokens, or the rollout drawn with the method's seed) comes from kdbench.
Each hyperparameter is set away from its default, and the test also checks that the default
would have given a clearly different number, so a method ignoring its config fails.
"""
from __future__ import annotations

import copy
import dataclasses
import random
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench.config import TrainConfig
from kdbench.data import collate, encode_pair, infinite_batches, lm_batch, lm_blocks
from kdbench.method import MethodContext, make_method
from kdbench.models import build_word_tokenizer
from kdbench.sampling import SamplingConfig
from kdbench.task import TaskOptions
from tasks.toy import ToyTask

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models, 1 torch thread

MAXLEN, MAXPROMPT, NEW, B = 40, 20, 6, 4
TOL = dict(rel=2e-4, abs=2e-5)


@pytest.fixture(scope="module")
def world():
    task = ToyTask(TaskOptions(extra={"n_creatures": 4, "n_train": 40, "n_dev": 4, "n_test": 4, "pretrain_docs": 30}))
    tok = build_word_tokenizer(task.vocabulary())
    return SimpleNamespace(tok=tok, exs=task.examples("train"), blocks=lm_blocks(tok, task.pretrain_texts(), MAXLEN))


def gpt2(tok, seed: int, std: float):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=MAXLEN, n_embd=16, n_layer=1, n_head=2, initializer_range=std,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.eos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return GPT2LMHeadModel(cfg)


@pytest.fixture(scope="module")
def teacher(world):
    return gpt2(world.tok, seed=7, std=0.5).eval()


def teacher_samples(world):
    return [ex.__class__(**{**ex.to_dict(), "meta": {**ex.meta, "target": "the cave ."}}) for ex in world.exs]


def ctx_for(world, teacher, tmp_path, *, pretrain=False, samples=None):
    train = TrainConfig(steps=1, batch_size=B, lr=1e-2, schedule="constant", log_every=1, seed=3)
    student = gpt2(world.tok, seed=1, std=0.3)  # not uniform: every divergence is far from 0
    return MethodContext(student=student, teacher=teacher, tokenizer=world.tok, train_examples=world.exs,
                         train_cfg=train, max_length=MAXLEN, max_prompt_length=MAXPROMPT, run_dir=tmp_path,
                         pretrain_blocks=world.blocks if pretrain else None,
                         sampling=SamplingConfig(max_new_tokens=NEW),
                         teacher_samples_fn=(lambda: samples) if samples else None, device="cpu",
                         method_name="test", progress=False)


def step_one(name, world, teacher, tmp_path, overrides=None, **kw):
    """(first history record, a frozen copy of the initial student, a fresh twin context)."""
    ctx = ctx_for(world, teacher, tmp_path, **kw)
    twin = ctx_for(world, teacher, tmp_path / "twin", **kw)  # same seeds: the same data streams
    student0 = copy.deepcopy(ctx.student).eval()
    make_method(name, overrides).train(ctx)
    return ctx.history[0], student0, twin


# --- the formulas, float64, written out here ---------------------------------------------------

def logp(model, batch):
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double(), -1)


def kl(la, lb):
    return (la.exp() * (la - lb)).sum(-1)


def mix(la, lb, wa):
    return torch.log(wa * la.exp() + (1 - wa) * lb.exp())


def tmean(x, mask):
    m = mask.double()
    return float((x * m).sum() / m.sum())


def ce(lq, batch):
    lab = batch.labels.clamp(min=0)
    return tmean(-lq.gather(-1, lab[..., None]).squeeze(-1), batch.loss_mask)


def picked(lp, batch):
    return lp.gather(-1, batch.labels.clamp(min=0)[..., None]).squeeze(-1) * batch.loss_mask.double()


def gold_batch(twin, examples=None):
    return twin.encode(next(twin.example_batches(examples)))


def rollout(twin, student0, exs, seed, **kw):
    twin.student = student0
    return twin.rollout_batch(twin.sample(student0, exs, seed=seed, **kw))


# --- offline methods --------------------------------------------------------------------------

def test_sft_is_gold_cross_entropy(world, teacher, tmp_path):
    h, s0, twin = step_one("sft", world, teacher, tmp_path)
    b = gold_batch(twin)
    assert h["loss"] == pytest.approx(ce(logp(s0, b), b), **TOL)


@pytest.mark.parametrize("ratio, T", [(0.5, 1.0), (0.2, 1.0), (0.7, 2.0)])
def test_kd_mixes_ce_and_forward_kl_by_its_ratio(world, teacher, tmp_path, ratio, T):
    h, s0, twin = step_one("kd", world, teacher, tmp_path, {"kd_ratio": ratio, "temperature": T})
    b = gold_batch(twin)
    ls, lt = logp(s0, b), logp(teacher, b)
    c = ce(ls, b)
    lsT, ltT = [torch.log_softmax(x / T, -1) for x in (ls, lt)]  # log-softmax of logits / T
    f = tmean(kl(ltT, lsT), b.loss_mask) * T * T
    assert h["ce"] == pytest.approx(c, **TOL) and h["fkl"] == pytest.approx(f, **TOL)
    assert h["loss"] == pytest.approx((1 - ratio) * c + ratio * f, **TOL)
    assert abs(c - f) > 0.05  # the ratio is visible in the loss


@pytest.mark.parametrize("ratio", [0.0, 0.3])
def test_seqkd_trains_on_teacher_samples(world, teacher, tmp_path, ratio):
    samples = teacher_samples(world)
    h, s0, twin = step_one("seqkd", world, teacher, tmp_path, {"kd_ratio": ratio}, samples=samples)
    b = gold_batch(twin, samples)
    assert b.n_tokens == 4 * B  # "the cave ." + EOS: the cached samples, not the gold
    ls = logp(s0, b)
    c, f = ce(ls, b), tmean(kl(logp(teacher, b), ls), b.loss_mask)
    assert h["loss"] == pytest.approx((1 - ratio) * c + ratio * f, **TOL)
    assert h["ce"] == pytest.approx(c, **TOL)


# --- token-level methods on student samples or other sources ------------------------------------

def test_single_step_is_reverse_kl_on_a_fresh_student_sample(world, teacher, tmp_path):
    h, s0, twin = step_one("single_step", world, teacher, tmp_path)
    b = rollout(twin, s0, next(twin.example_batches()), twin.step_seed(0))
    v = tmean(kl(logp(s0, b), logp(teacher, b)), b.loss_mask)
    assert h["loss"] == pytest.approx(v, **TOL) and h["rkl"] == pytest.approx(v, **TOL)


def js_ref(lq, lp, beta):
    m = mix(lp, lq, beta)
    return beta * kl(lp, m) + (1 - beta) * kl(lq, m)


@pytest.mark.parametrize("beta, data", [(0.5, "student"), (0.2, "gold"), (0.8, "teacher")])
def test_js_on_its_data_source(world, teacher, tmp_path, beta, data):
    samples = teacher_samples(world)
    h, s0, twin = step_one("js", world, teacher, tmp_path, {"beta": beta, "data": data}, samples=samples)
    exs = next(twin.example_batches(samples if data == "teacher" else None))
    b = rollout(twin, s0, exs, twin.step_seed(0)) if data == "student" else twin.encode(exs)
    lq, lp = logp(s0, b), logp(teacher, b)
    assert h["js"] == pytest.approx(tmean(js_ref(lq, lp, beta), b.loss_mask), **TOL)
    assert abs(tmean(js_ref(lq, lp, 0.5), b.loss_mask) - tmean(js_ref(lq, lp, 0.35), b.loss_mask)) > 1e-3


@pytest.mark.parametrize("data", ["student", "gold"])
def test_tvd_is_half_the_l1_distance(world, teacher, tmp_path, data):
    h, s0, twin = step_one("tvd", world, teacher, tmp_path, {"data": data})
    exs = next(twin.example_batches())
    b = rollout(twin, s0, exs, twin.step_seed(0)) if data == "student" else twin.encode(exs)
    v = 0.5 * (logp(s0, b).exp() - logp(teacher, b).exp()).abs().sum(-1)
    assert h["tvd"] == pytest.approx(tmean(v, b.loss_mask), **TOL)


@pytest.mark.parametrize("lmbda, beta, temperature", [(1.0, 0.3, 0.9), (1.0, 0.5, 2.0), (0.0, 0.7, 0.9),
                                                     (0.0, 0.0, 0.9), (1.0, 1.0, 0.9)])
def test_gkd_generalized_jsd_on_its_draw(world, teacher, tmp_path, lmbda, beta, temperature):
    h, s0, twin = step_one("gkd", world, teacher, tmp_path, {"lmbda": lmbda, "beta": beta,
                                                            "temperature": temperature})
    exs = next(twin.example_batches())
    on = random.Random(twin.train_cfg.seed).random() < lmbda
    assert h["on_policy"] == float(on)
    b = (rollout(twin, s0, exs, twin.step_seed(0), cfg=dataclasses.replace(twin.sampling, temperature=temperature))
         if on else twin.encode(exs))
    lq, lp = logp(s0, b), logp(teacher, b)
    ref = kl(lp, lq) if beta == 0 else kl(lq, lp) if beta == 1 else js_ref(lq, lp, beta)
    assert h["gjsd"] == pytest.approx(tmean(ref, b.loss_mask), **TOL)


@pytest.mark.parametrize("loss, alpha, ratio", [("srkl", 0.1, 1.0), ("srkl", 0.3, 0.6), ("sfkl", 0.2, 1.0)])
def test_distillm_skew_divergence_on_gold_at_threshold_zero(world, teacher, tmp_path, loss, alpha, ratio):
    h, s0, twin = step_one("distillm", world, teacher, tmp_path,
                           {"loss": loss, "skew_alpha": alpha, "kd_ratio": ratio, "dev_size": 8})
    order = list(range(len(world.exs)))
    random.Random(twin.train_cfg.seed).shuffle(order)
    train = [world.exs[i] for i in order[8:]]
    b = gold_batch(twin, train)
    lq, lp = logp(s0, b), logp(teacher, b)
    d = kl(lq, mix(lq, lp, alpha)) if loss == "srkl" else kl(lp, mix(lp, lq, alpha))
    d = tmean(d, b.loss_mask)
    assert h[loss] == pytest.approx(d, **TOL) and h["fresh"] == 0.0
    assert h["loss"] == pytest.approx(ratio * d + (1 - ratio) * ce(lq, b), **TOL)


@pytest.mark.parametrize("n, margin, coef, norm", [(3, 0.0, 1.0, True), (2, 0.5, 0.3, False)])
def test_ranking_hinge_over_teacher_ordered_pairs_plus_gold(world, teacher, tmp_path, n, margin, coef, norm):
    h, s0, twin = step_one("ranking", world, teacher, tmp_path,
                           {"num_samples": n, "margin": margin, "sft_coef": coef, "length_norm": norm})
    exs = next(twin.example_batches())
    r = rollout(twin, s0, [ex for ex in exs for _ in range(n)], twin.step_seed(0))

    def score(model, b):
        tot = picked(logp(model, b), b).sum(-1)
        return tot / b.loss_mask.double().sum(-1) if norm else tot

    q, p = score(s0, r).view(B, n), score(teacher, r).view(B, n)
    hinge = [max(0.0, margin - float(q[g, i]) + float(q[g, j]))
             for g in range(B) for i in range(n) for j in range(n) if float(p[g, i]) > float(p[g, j])]
    gold = collate([encode_pair(world.tok, ex.prompt, ex.target, MAXLEN, MAXPROMPT) for ex in exs], twin.pad_id)
    sft = ce(logp(s0, gold), gold)
    assert h["pairs"] == len(hinge) > 0
    assert h["rank"] == pytest.approx(sum(hinge) / len(hinge), **TOL)
    assert h["sft"] == pytest.approx(sft, **TOL)
    assert h["loss"] == pytest.approx(sum(hinge) / len(hinge) + coef * sft, **TOL)


# --- MiniLLM -------------------------------------------------------------------------------------

def minillm_reference(world, teacher, s0, twin, cfg):
    """The first minibatch's terms, rebuilt from the round: w = q / mix, r_t = log p - log q,
    A_t = mean over later tokens of gamma^k r (or their sum), whitened over the round, PPO-clip."""
    R = B * cfg["rollout_minibatches"]
    exs = next(twin.example_batches(batch_size=R))
    alpha = cfg["teacher_mix_alpha"] if cfg["teacher_mix"] else 0.0
    store = rollout(twin, s0, exs, twin.step_seed(0), mix_alpha=alpha)
    mask = store.loss_mask > 0
    lq, lp = logp(s0, store), logp(teacher, store)
    q, p = picked(lq, store), picked(lp, store)
    w = q.exp() / ((1 - alpha) * q.exp() + alpha * p.exp())
    raw = torch.zeros_like(q)
    for i in range(R):
        pos = mask[i].nonzero().flatten().tolist()
        rew = (p - q)[i, pos].tolist()
        for j, t in enumerate(pos):
            fut = rew[j + 1:]
            g = sum(cfg["gamma"] ** k * x for k, x in enumerate(fut))
            raw[i, t] = (g / len(fut) if cfg["length_norm"] else g) if fut else 0.0
    v = raw[mask]
    adv = torch.zeros_like(raw)
    adv[mask] = (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + 1e-8)
    rows = torch.randperm(R, generator=torch.Generator().manual_seed(twin.train_cfg.seed))[:B]
    m = mask[rows]

    def pg(clip):  # the ratio q_new / q_old is 1 at step 1: only w is clipped
        a, ww = adv[rows][m], w[rows][m]
        return float(torch.maximum(-a * ww, -a * ww.clamp(1 - clip, 1 + clip)).mean())

    out = {"pg": pg(cfg["clip"]), "pg_default_clip": pg(0.2), "pg_no_weights": float((-adv[rows][m]).mean()),
           "reward": float((p - q)[rows][m].mean()),
           "single_step": float(kl(lq, lp)[rows][m].mean())}
    idx = next(infinite_batches(len(world.blocks), B, twin.train_cfg.seed + 7))  # the method's PT stream
    lm = lm_batch(world.blocks[idx])
    lml = logp(s0, lm)
    c = ce(lml, lm)
    out["pt"] = (1 - cfg["pt_kd_ratio"]) * c + cfg["pt_kd_ratio"] * tmean(kl(logp(teacher, lm), lml), lm.loss_mask)
    return out


MINILLM = {"teacher_mix": True, "teacher_mix_alpha": 0.2, "gamma": 0.95, "clip": 0.2, "length_norm": True,
           "rollout_minibatches": 2, "ppo_epochs": 1, "lm_coef": 1.0, "pt_kd_ratio": 0.0, "single_step": True}


@pytest.mark.parametrize("changes", [
    {},
    {"clip": 0.05, "lm_coef": 0.5, "gamma": 0.7},
    {"teacher_mix_alpha": 0.5, "length_norm": False, "pt_kd_ratio": 0.5},
    {"teacher_mix": False, "single_step": False},
])
def test_minillm_terms_at_step_one(world, teacher, tmp_path, changes):
    cfg = {**MINILLM, **changes}
    h, s0, twin = step_one("minillm", world, teacher, tmp_path, cfg, pretrain=True)
    ref = minillm_reference(world, teacher, s0, twin, cfg)
    assert h["pg"] == pytest.approx(ref["pg"], **TOL)
    assert h["reward"] == pytest.approx(ref["reward"], **TOL)
    assert h["pt"] == pytest.approx(ref["pt"], **TOL)
    total = ref["pg"] + cfg["lm_coef"] * ref["pt"]
    if cfg["single_step"]:
        assert h["single_step"] == pytest.approx(ref["single_step"], **TOL)
        total += ref["single_step"]
    else:
        assert "single_step" not in h
    assert h["loss"] == pytest.approx(total, **TOL)
    if cfg["teacher_mix"]:  # the importance weights and the clip both move the number
        assert abs(ref["pg"] - ref["pg_no_weights"]) > 1e-3
        if cfg["clip"] != 0.2:
            assert abs(ref["pg"] - ref["pg_default_clip"]) > 1e-3
