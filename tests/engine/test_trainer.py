"""The shared training loop: exact gradient accumulation, schedules, checkpoint resume."""
import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench.config import TrainConfig
from kdbench.data import IGNORE, Batch, collate
from kdbench.method import cross_entropy
from kdbench.trainer import LossOutput, NonFiniteLossError, Trainer, lr_lambda


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=24, n_positions=32, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0, embd_pdrop=0,
                     attn_pdrop=0, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    return GPT2LMHeadModel(cfg)


def uneven_batch(seed=0, n=8):
    """Rows with very different response lengths, so micro-batch means differ from token means."""
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for i in range(n):
        p = torch.randint(2, 24, (3,), generator=g).tolist()
        r = torch.randint(2, 24, (1 + (i % 4) * 4,), generator=g).tolist()
        seqs.append((p, r))
    return collate(seqs, pad_id=0)


def loss_fn_for(model):
    def f(batch):
        return LossOutput(cross_entropy(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                                        batch.labels))
    return f


def batches_of(batch):
    while True:
        yield batch


def test_gradient_accumulation_equals_the_big_batch(tmp_path):
    batch = uneven_batch()
    results = []
    for accum in (1, 2, 4):
        # float64 end to end: Adam turns fp32 rounding on near-zero gradients into ~1e-5 weight noise,
        # as large as the effect tested; in float64 that noise is gone and the tolerance can be tight
        model = tiny_model().double()

        def loss_fn(b, model=model):
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
            return LossOutput(torch.nn.functional.cross_entropy(logits.flatten(0, 1), b.labels.flatten(),
                                                                ignore_index=IGNORE))

        cfg = TrainConfig(steps=3, batch_size=8, grad_accum=accum, lr=1e-2, clip_grad=0, warmup_steps=0)
        Trainer(cfg, None, progress=False).fit(model, loss_fn, batches_of(batch))
        results.append(copy.deepcopy(model.state_dict()))
    for other in results[1:]:
        for k in results[0]:
            torch.testing.assert_close(results[0][k], other[k], rtol=1e-9, atol=1e-10)


def test_accumulated_loss_is_the_token_mean_not_the_mean_of_micro_means():
    batch = uneven_batch()
    model = tiny_model()
    full = float(loss_fn_for(model)(batch).loss)
    micro = batch.split(4)
    means = [float(loss_fn_for(model)(m).loss) for m in micro]
    weights = [m.n_tokens for m in micro]
    token_mean = sum(w * v for w, v in zip(weights, means)) / sum(weights)
    assert token_mean == pytest.approx(full, rel=1e-5)
    assert len(set(weights)) > 1  # micro-batches hold different token counts, so the weighting matters


def test_schedules():
    cos = lr_lambda(TrainConfig(steps=100, lr=1.0, min_lr=0.0, warmup_steps=10, schedule="cosine"))
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(55) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    const = lr_lambda(TrainConfig(steps=100, lr=1.0, schedule="constant", warmup_steps=4))
    assert const(1) == pytest.approx(0.5) and const(50) == 1.0
    lin = lr_lambda(TrainConfig(steps=10, lr=1.0, min_lr=0.0, schedule="linear"))
    assert lin(5) == pytest.approx(0.5)


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path):
    def data():
        i = 0
        while True:
            yield uneven_batch(seed=i)
            i += 1

    cfg = TrainConfig(steps=6, batch_size=8, lr=1e-2, checkpoint_every=2, warmup_steps=2)
    ref = tiny_model()
    Trainer(cfg, None, progress=False).fit(ref, loss_fn_for(ref), data())

    # Interrupted run: stop after 4 steps (checkpoint at step 4), then resume in a fresh model.
    run_dir = tmp_path / "cell"
    part = tiny_model()
    short = TrainConfig(**{**cfg.__dict__, "steps": 6})

    class Stop(Exception):
        pass

    def stopping():
        for i, b in enumerate(data()):
            if i == 5:
                raise Stop
            yield b

    with pytest.raises(Stop):
        Trainer(short, run_dir, progress=False).fit(part, loss_fn_for(part), stopping())
    assert (run_dir / "checkpoint.pt").exists()
    resumed = tiny_model(seed=123)  # different init: everything must come from the checkpoint
    Trainer(cfg, run_dir, progress=False).fit(resumed, loss_fn_for(resumed), data())
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(v, resumed.state_dict()[k])


def test_non_finite_loss_reports_step_and_terms():
    model = tiny_model()
    batch = uneven_batch()
    step = {"n": 0}

    def bad(b):
        step["n"] += 1
        loss = cross_entropy(model(input_ids=b.input_ids).logits, b.labels)
        if step["n"] == 2:
            loss = loss * float("nan")
        return LossOutput(loss, {"kl": 0.5})

    cfg = TrainConfig(steps=3, batch_size=8, lr=1e-3)
    with pytest.raises(NonFiniteLossError, match=r"step 2 \(terms: kl=0.5\)"):
        Trainer(cfg, None, progress=False).fit(model, bad, batches_of(batch))


def test_collate_aligns_labels_with_logits():
    b = collate([([5, 6], [7, 8, 1]), ([5], [9, 1])], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 1], [5, 9, 1, 0, 0]]
    # position t predicts labels[t]: the last prompt token predicts the first response token.
    assert b.labels.tolist() == [[IGNORE, 7, 8, 1, IGNORE], [9, 1, IGNORE, IGNORE, IGNORE]]
    assert b.n_tokens == 5
    assert isinstance(b, Batch)


def test_adamw_is_fused_on_cpu_and_an_unfused_checkpoint_resumes_fused():
    """The optimizer is torch's fused AdamW where the weights train (CPU here). A checkpoint written by the
    unfused optimizer (before kdbench fused it) must resume fused with the same moments: torch's own
    load_state_dict restores the saved group's flag (None), and under fp16 loss scaling that update raises."""
    from kdbench.train_state import load_optimizer_state
    from kdbench.trainer import make_optimizer

    cfg = TrainConfig(lr=1e-2, weight_decay=0.1)
    model = tiny_model()
    assert all(g["fused"] for g in make_optimizer(model, cfg).param_groups)
    assert not any(g["fused"] for g in make_optimizer(model, cfg, device="meta").param_groups)

    def groups(m):
        return [{"params": [p for p in m.parameters() if p.ndim >= 2], "weight_decay": 0.1},
                {"params": [p for p in m.parameters() if p.ndim < 2], "weight_decay": 0.0}]

    old = torch.optim.AdamW(groups(model), lr=1e-2)  # unfused, as checkpoints before fused AdamW were
    for seed in range(2):
        loss_fn_for(model)(uneven_batch(seed=seed)).loss.backward()
        old.step()
        old.zero_grad()
    saved = copy.deepcopy(old.state_dict())
    assert saved["param_groups"][0]["fused"] is None
    plain = make_optimizer(model, cfg)
    plain.load_state_dict(copy.deepcopy(saved))
    assert plain.param_groups[0]["fused"] is None  # what torch alone would resume with
    twin = copy.deepcopy(model)
    resumed = make_optimizer(model, cfg)
    load_optimizer_state(resumed, copy.deepcopy(saved))
    assert all(g["fused"] for g in resumed.param_groups)
    unfused = torch.optim.AdamW(groups(twin), lr=1e-2)
    unfused.load_state_dict(copy.deepcopy(saved))
    for opt, m in ((resumed, model), (unfused, twin)):
        loss_fn_for(m)(uneven_batch(seed=2)).loss.backward()
        opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):  # the moments and step count came back
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert float(resumed.state[next(model.parameters())]["step"]) == 3
