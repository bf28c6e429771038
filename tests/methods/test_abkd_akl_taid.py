"""The abkd, akl and taid methods: step-1 losses on a fixed batch against independent float64
computations (non-default settings, so an ignored setting fails), TAID's target and its t schedule
(sota-methods.md §2f), t in the history, and an exact resume of t."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench.config import TrainConfig
from kdbench.errors import ConfigError
from kdbench.method import MethodContext, make_method
from kdbench.models import build_word_tokenizer
from kdbench.sampling import SamplingConfig
from kdbench.task import TaskOptions
from methods.taid import TAIDConfig, next_t, taid_loss, token_taid
from tasks.toy import ToyTask

pytestmark = pytest.mark.usefixtures("one_thread")
MAXLEN, MAXPROMPT = 40, 20


@pytest.fixture(scope="module")
def world():
    task = ToyTask(TaskOptions(extra={"n_creatures": 4, "n_train": 48, "n_dev": 4, "n_test": 4, "pretrain_docs": 8}))
    tok = build_word_tokenizer(task.vocabulary())
    return SimpleNamespace(tok=tok, exs=task.examples("train"))


def gpt2(tok, seed, std):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=MAXLEN, n_embd=16, n_layer=1, n_head=2,
                                      initializer_range=std, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id))


def make_ctx(world, run_dir=None, steps=1, **train):
    cfg = TrainConfig(**{"steps": steps, "batch_size": 6, "lr": 1e-2, "schedule": "constant", "log_every": 1,
                         "seed": 0, **train})
    return MethodContext(student=gpt2(world.tok, 1, 0.3), teacher=gpt2(world.tok, 7, 0.5).eval(), tokenizer=world.tok,
                         train_examples=world.exs, train_cfg=cfg, max_length=MAXLEN, max_prompt_length=MAXPROMPT,
                         run_dir=run_dir, sampling=SamplingConfig(max_new_tokens=4), device="cpu",
                         method_name="test", progress=False)


@torch.no_grad()
def first_batch_rows(world):
    """(q, p, labels) in float64 for every response token of the first training batch, from the
    untrained student: what step 1's loss sees."""
    ctx = make_ctx(world)
    b = ctx.encode(next(ctx.example_batches()))
    s = ctx.student(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.double()
    t = ctx.teacher(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.double()
    keep = b.labels >= 0
    return s[keep], t[keep], b.labels[keep]


def step1_loss(world, name, overrides):
    ctx = make_ctx(world)
    make_method(name, overrides).train(ctx)
    return ctx.history[0]


def ce64(s, labels):
    return float(-(s.log_softmax(-1).gather(-1, labels[:, None])).mean())


# --- step 1 against independent computations ---------------------------------------------------------

def test_abkd_step1_loss(world):
    s, t, y = first_batch_rows(world)
    a, b = 0.3, 0.6
    p, q = t.softmax(-1), s.softmax(-1)
    d = (-1 / (a * b) * (p**a * q**b - a / (a + b) * p ** (a + b) - b / (a + b) * q ** (a + b)).sum(-1)).mean()
    rec = step1_loss(world, "abkd", {"alpha": a, "beta": b, "kd_ratio": 0.8})
    assert rec["ab_div"] == pytest.approx(float(d), rel=1e-5)
    assert rec["loss"] == pytest.approx(0.8 * float(d) + 0.2 * ce64(s, y), rel=1e-5)


def test_akl_step1_loss(world):
    s, t, y = first_batch_rows(world)
    mu, vals = 0.3, []
    for sv, tv in zip(s, t):  # one token at a time, the way the paper describes it
        p, q = tv.softmax(-1).tolist(), sv.softmax(-1).tolist()
        order = sorted(range(len(p)), key=lambda i: -p[i])
        cum, g_head, g_tail = 0.0, 0.0, 0.0
        for rank, i in enumerate(order):
            cum += p[i]
            if rank == 0 or cum <= mu:
                g_head += abs(p[i] - q[i])
            else:
                g_tail += abs(p[i] - q[i])
        fkl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        rkl = sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
        vals.append((g_head * fkl + g_tail * rkl) / (g_head + g_tail))
    d = sum(vals) / len(vals)
    rec = step1_loss(world, "akl", {"mu": mu, "kd_ratio": 0.7})
    assert rec["akl"] == pytest.approx(d, rel=1e-5)
    assert rec["loss"] == pytest.approx(0.7 * d + 0.3 * ce64(s, y), rel=1e-5)


def test_taid_step1_loss(world):
    s, t, y = first_batch_rows(world)
    t0 = 0.25
    r = ((1 - t0) * s + t0 * t).softmax(-1)
    j = float(-(r * s.log_softmax(-1)).sum(-1).mean())
    rec = step1_loss(world, "taid", {"t_start": t0, "distil_ratio": 0.9})
    assert rec["t"] == t0
    assert rec["taid"] == pytest.approx(j, rel=1e-5)
    assert rec["loss"] == pytest.approx(0.9 * j + 0.1 * ce64(s, y), rel=1e-5)


@pytest.mark.parametrize("name", ["fkl", "rkl"])
def test_fkl_rkl_step1_loss(world, name):
    s, t, y = first_batch_rows(world)
    p, q = t.softmax(-1), s.softmax(-1)
    a, b = (p, q) if name == "fkl" else (q, p)
    d = float((a * (a.log() - b.log())).sum(-1).mean())
    rec = step1_loss(world, name, {"kd_ratio": 0.6})
    assert rec[name] == pytest.approx(d, rel=1e-5)
    assert rec["loss"] == pytest.approx(0.6 * d + 0.4 * ce64(s, y), rel=1e-5)


def test_headline_claims_name_registered_methods():
    from kdbench.claims import CLAIMS
    from kdbench.method import METHODS

    for cid, method, others in [("TAID-1", "taid", {"kd", "fkl"}), ("ABKD-1", "abkd", {"fkl", "rkl"}),
                                ("AKL-1", "akl", {"fkl", "rkl"})]:
        reqs = CLAIMS.get(cid).requirements
        assert {r.method for r in reqs} == {method} and {r.other for r in reqs} == others
        assert all(r.expect == "higher" and r.metric_for("toy") == "validity" for r in reqs)
        assert {method, *others} <= set(METHODS.names())


# --- TAID's target --------------------------------------------------------------------------------------

def rand_logits(seed, shape=(2, 3, 6)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 2, torch.randn(*shape, generator=g) * 2


def test_taid_at_t1_is_forward_kl_plus_teacher_entropy():
    s, t = rand_logits(0)
    p = t.softmax(-1)
    fkl = (p * (p.log() - s.log_softmax(-1))).sum(-1)
    torch.testing.assert_close(token_taid(s, t, 1.0), fkl - (p * p.log()).sum(-1), rtol=1e-5, atol=1e-6)


def test_taid_gradient_stops_at_the_student_side_of_the_target():
    s, t = rand_logits(1)
    s0 = s.clone().requires_grad_(True)
    taid_loss(s0, t, torch.ones(2, 3), 0.0).backward()
    assert s0.grad.abs().max() < 1e-6  # t = 0: the target is sg(q) itself (rounding only)
    # 0 < t < 1: the gradient is that of KL(r || q) with r a constant: (q - r) / n_tokens
    s1 = s.clone().requires_grad_(True)
    taid_loss(s1, t, torch.ones(2, 3), 0.3).backward()
    r = (0.7 * s + 0.3 * t).softmax(-1)
    torch.testing.assert_close(s1.grad, (s.softmax(-1) - r) / 6, rtol=1e-5, atol=1e-7)


# --- TAID's t schedule ------------------------------------------------------------------------------------

def test_next_t_first_step_constant_loss_and_floor():
    cfg = TAIDConfig(t_start=0.2, alpha=0.1, beta=0.9)
    assert next_t(cfg, 0.2, 0.0, None, 3.0, 0, 100) == (0.2, 0.0, 3.0)  # the first call only records J
    t, m, prev = next_t(cfg, 0.2, 0.0, 3.0, 3.0, 1, 100)  # constant J: delta = alpha (1 - t) / 2
    assert (m, prev) == (0.0, 3.0) and t == pytest.approx(0.2 + 0.1 * 0.8 / 2)
    # a falling loss speeds t up through the momentum: M = (1 - beta) * (4 - 3) / 4
    t2, m2, _ = next_t(cfg, 0.2, 0.0, 4.0, 3.0, 1, 100)
    assert m2 == pytest.approx(0.1 * 0.25) and t2 == pytest.approx(0.2 + 0.1 / (1 + math.exp(-m2)) * 0.8)
    # the linear floor wins when the adaptive step is small; t_end caps
    slow = TAIDConfig(t_start=0.2, alpha=1e-6)
    assert next_t(slow, 0.2, 0.0, 3.0, 3.0, 50, 100)[0] == pytest.approx(0.2 + 0.8 * 0.5)
    assert next_t(TAIDConfig(t_start=0.2, t_end=0.5, alpha=1.0), 0.49, 5.0, 3.0, 1.0, 1, 100)[0] == 0.5
    assert next_t(TAIDConfig(t_start=0.2, adaptive=False, alpha=1.0), 0.3, 0.0, 3.0, 1.0, 10, 100)[0] == \
        pytest.approx(0.28)  # t = t_lin, ignoring the adaptive rule


def test_next_t_never_decreases_and_stays_in_bounds():
    cfg = TAIDConfig(t_start=0.3, t_end=0.9, alpha=0.05, beta=0.5)
    g = torch.Generator().manual_seed(0)
    t, m, prev, total = cfg.t_start, 0.0, None, 200
    for step in range(total):
        loss = float(torch.rand(1, generator=g)) * 10  # the loss jumps up and down
        t_new, m, prev = next_t(cfg, t, m, prev, loss, step, total)
        t_lin = cfg.t_start + (cfg.t_end - cfg.t_start) * step / total
        assert t <= t_new <= cfg.t_end and (step == 0 or t_new >= t_lin - 1e-12)
        t = t_new


def test_taid_moves_t_once_per_step_from_the_step_loss(world):
    # grad_accum 2: upstream would move t per micro-batch; here the step's token-weighted J moves it once
    cfg = {"t_start": 0.2, "alpha": 0.9, "beta": 0.9}
    ctx = make_ctx(world, steps=4, grad_accum=2)
    make_method("taid", cfg).train(ctx)
    h = ctx.history
    assert h[0]["t"] == h[1]["t"] == 0.2  # step 1 only records J
    c = TAIDConfig(**cfg)
    t, m, prev = 0.2, 0.0, None
    for k in range(3):
        t, m, prev = next_t(c, t, m, prev, h[k]["taid"], k, 4)
        assert h[k + 1]["t"] == pytest.approx(t, rel=1e-9)
    assert h[3]["t"] > 0.2 + 0.8 * 2 / 4  # the adaptive rule, not the floor, set it


class Killed(Exception):
    pass


def test_taid_resume_restores_t_exactly(world, tmp_path, monkeypatch):
    # alpha large enough that the adaptive rule leads the floor: a resume that lost t, M or J_prev
    # would continue with another t
    cfg = {"t_start": 0.1, "t_end": 0.9, "alpha": 0.8, "beta": 0.5}

    def run(run_dir):
        ctx = make_ctx(world, run_dir, steps=6, checkpoint_every=2)
        make_method("taid", cfg).train(ctx)
        return ctx

    ref = run(None)
    import kdbench.trainer as T

    real, n = T.atomic_torch_save, [0]

    def save(obj, path):
        real(obj, path)
        n[0] += 1
        if n[0] == 2:
            raise Killed

    monkeypatch.setattr(T, "atomic_torch_save", save)
    with pytest.raises(Killed):
        run(tmp_path)
    monkeypatch.undo()
    resumed = run(tmp_path)
    ts = [h["t"] for h in ref.history]
    assert [h["t"] for h in resumed.history] == ts
    assert ts[5] > 0.1 + 0.8 * 4 / 6 and len(set(ts)) == 5  # t moved at every step after the first
    for k, v in ref.student.state_dict().items():
        assert torch.equal(v, resumed.student.state_dict()[k]), k


@pytest.mark.parametrize("name, overrides, key", [
    ("abkd", {"alpha": -0.5}, "method_config.abkd.alpha"),
    ("abkd", {"beta": 1.5}, "method_config.abkd.beta"),
    ("akl", {"mu": 2.0}, "method_config.akl.mu"),
    ("taid", {"t_start": 1.0}, "method_config.taid.t_start"),
    ("taid", {"t_start": 0.6, "t_end": 0.5}, "method_config.taid.t_end"),
    ("taid", {"beta": 1.5}, "method_config.taid.beta"),
])
def test_bad_configs_name_the_key(name, overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        make_method(name, overrides)


def test_defaults_are_the_official_ones():
    assert (make_method("abkd").config.alpha, make_method("abkd").config.beta) == (0.2, 0.7)
    c = make_method("taid").config
    assert (c.t_start, c.t_end, c.alpha, c.beta, c.adaptive, c.distil_ratio) == (0.4, 1.0, 5e-4, 0.99, True, 1.0)
    assert (make_method("akl").config.mu, make_method("akl").config.kd_ratio) == (0.5, 1.0)
    assert {n: make_method(n).student_init for n in ("abkd", "akl", "fkl", "rkl", "taid")} == \
        {"abkd": "sft", "akl": "sft", "fkl": "sft", "rkl": "sft", "taid": "base"}


@pytest.mark.parametrize("preset", ["tiny", "gpt2"])
def test_presets_give_the_new_methods_kds_budget(preset):
    # gold-data methods (budget class "offline"): the same steps, batch and schedule as kd
    from kdbench.cli import build_parser, resolve_config
    from kdbench.method import METHODS

    names = ["kd", "abkd", "akl", "fkl", "rkl", "taid"]
    cfg = resolve_config(build_parser().parse_args(["--preset", preset, "--methods", ",".join(names)]))
    kd = cfg.train_config_for("kd", budget=METHODS.get("kd").budget)
    for name in names[1:]:
        assert METHODS.get(name).budget == "offline"
        assert cfg.train_config_for(name, budget=METHODS.get(name).budget) == kd
