"""Resume after any interruption, atomic writes, one process per folder.

- Method level (fast, in process): every kind of data source resumes exactly from checkpoint.pt,
  including on-policy methods whose data depends on earlier students (MiniLLM's rollout rounds,
  DistiLLM's replay buffer and threshold). The "kill" is an exception right after a checkpoint:
  nothing of the process survives but what is on disk, as with SIGKILL.
- Benchmark level: a micro `ci` run in a child process (forked: it need not import torch again)
  SIGKILLs itself at exact moments (a stage in its .partial folder, a stage between DONE and
  rename, a train cell, an eval cell), is rerun each time, and must end with the leaderboard,
  metrics and weights of an uninterrupted run. (benchmarks/kill_resume.py does the same on the full
  `ci` preset, in fresh interpreters, with kills sent from outside at moments seen on disk.)
- Atomic writes, stale temp files, unreadable or foreign checkpoints, out-of-memory messages.
- Locks: a second process fails at once; a dead owner's lock is taken over; Ctrl-C releases it.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import micro_run
from kdbench.cli import main
from kdbench.config import TrainConfig
from kdbench.data import collate, lm_blocks
from kdbench.io import atomic_write_json, atomic_write_text, is_done
from kdbench.lock import FolderLock, FolderLockedError
from kdbench.method import MethodContext, make_method
from kdbench.models import build_word_tokenizer
from kdbench.sampling import SamplingConfig
from kdbench.task import TaskOptions
from kdbench.trainer import LossOutput, ResumableBatches, Trainer, TrainingOutOfMemoryError
from tasks.toy import ToyTask

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models, 1 torch thread

MAXLEN, MAXPROMPT = 40, 20


@pytest.fixture(autouse=True)
def kdbench_logs_reach_caplog():
    # the CLI's setup_logging (run by other tests in this process) stops propagation to the root
    logger = logging.getLogger("kdbench")
    old = logger.propagate
    logger.propagate = True
    yield
    logger.propagate = old


# ------------------------------------------------------------------------------------------------
# method level: exact resume for every data source


@pytest.fixture(scope="module")
def world():
    task = ToyTask(TaskOptions(extra={"n_creatures": 4, "n_train": 48, "n_dev": 4, "n_test": 4, "pretrain_docs": 32}))
    tok = build_word_tokenizer(task.vocabulary())
    return tok, task.examples("train"), lm_blocks(tok, task.pretrain_texts(), MAXLEN)


def gpt2(tok, seed, std=0.02, dropout=0.0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=MAXLEN, n_embd=16, n_layer=1, n_head=2,
                                      initializer_range=std, resid_pdrop=dropout, embd_pdrop=dropout,
                                      attn_pdrop=dropout, bos_token_id=tok.eos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))


class Killed(Exception):
    pass


def train_method(world, run_dir, name, overrides, steps, kill_after_checkpoint=None, monkeypatch=None, lora=False):
    """Train a fresh student (same init every time) with `name`, through a LoRA adapter when `lora`;
    optionally die right after the n-th checkpoint write. Returns (weights, history, counters)."""
    tok, exs, blocks = world
    student = gpt2(tok, 1, dropout=0.1)
    if lora:
        from kdbench import adapters
        from kdbench.config import PeftConfig

        student = adapters.wrap(student, PeftConfig(method="lora", r=4, alpha=8, dropout=0.1), seed=0)
    if kill_after_checkpoint is not None:
        import kdbench.trainer as T

        real, n = T.atomic_torch_save, [0]

        def save(obj, path):
            real(obj, path)
            n[0] += 1
            if n[0] == kill_after_checkpoint:
                raise Killed

        monkeypatch.setattr(T, "atomic_torch_save", save)
    train = TrainConfig(steps=steps, batch_size=4, lr=1e-2, schedule="constant", log_every=3, seed=0,
                        checkpoint_every=2)
    ctx = MethodContext(student=student, teacher=gpt2(tok, 7, std=0.5).eval(), tokenizer=tok,
                        train_examples=exs, train_cfg=train, max_length=MAXLEN, max_prompt_length=MAXPROMPT,
                        run_dir=run_dir, pretrain_blocks=blocks, sampling=SamplingConfig(max_new_tokens=6),
                        device="cpu", method_name=name, progress=False)
    ctx.vocab_size = len(tok)
    try:
        make_method(name, overrides).train(ctx)
    finally:
        if monkeypatch is not None:
            monkeypatch.undo()
    return {k: v.clone() for k, v in ctx.student.state_dict().items()}, ctx.history, dict(ctx.counters)


@pytest.mark.parametrize("name,overrides,steps,kill_at,lora", [
    ("kd", {}, 6, 2, False),  # gold data: a plain generator, replayed
    ("gkd", {"lmbda": 0.5}, 6, 1, False),  # a fresh seeded rollout per step: plain generator, replayed
    # a rollout round of 4 steps (8 rollouts, 2 PPO epochs): killed mid-round, the round is restored
    ("minillm", {"rollout_minibatches": 2, "ppo_epochs": 2}, 6, 1, False),
    # replay buffer, dev-loss threshold and a seeded RNG carried over steps
    ("distillm", {"init_threshold": 0.6, "capacity": 8, "dev_size": 8, "eval_every": 2}, 6, 2, False),
    # TAID's t, momentum and last loss carried over steps (adaptive rule ahead of the linear floor)
    ("taid", {"t_start": 0.1, "t_end": 0.9, "alpha": 0.8}, 6, 2, False),
    # LoRA students (--peft lora): adapter weights, their optimizer state and LoRA dropout's RNG
    ("kd", {}, 6, 2, True),
    ("minillm", {"rollout_minibatches": 2, "ppo_epochs": 2}, 6, 1, True),
])
def test_method_resumes_exactly(world, tmp_path, monkeypatch, name, overrides, steps, kill_at, lora):
    ref_w, ref_h, ref_c = train_method(world, None, name, overrides, steps, lora=lora)
    run_dir = tmp_path / "cell"
    with pytest.raises(Killed):
        train_method(world, run_dir, name, overrides, steps, kill_after_checkpoint=kill_at, monkeypatch=monkeypatch,
                     lora=lora)
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 2 * kill_at
    w, h, c = train_method(world, run_dir, name, overrides, steps, lora=lora)
    if lora:  # the adapter trained, the base did not
        assert any("lora_B" in k and ref_w[k].abs().sum() > 0 for k in ref_w)
    for k in ref_w:
        assert torch.equal(ref_w[k], w[k]), k
    assert h == ref_h
    assert c == ref_c  # cost counters cover the whole run, not only the resumed part


def test_resumable_batches_restore_state_and_streams():
    def stream():
        i = 0
        while True:
            yield i
            i += 1

    def step(k, rb):
        rb.state.setdefault("seen", []).append(rb.draw("xs"))
        return collate([([1, 2], [3 + k])], 0)

    a = ResumableBatches(step, xs=stream())
    for _ in range(3):
        next(a)
    b = ResumableBatches(step, xs=stream())
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    next(a), next(b)
    assert a.state == b.state == {"seen": [0, 1, 2, 3]} and a.k == b.k == 4
    with pytest.raises(Exception, match="no longer draws"):
        ResumableBatches(step, other=stream()).load_state_dict(a.state_dict())


def tiny_lm_batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield collate([(torch.randint(2, 20, (3,), generator=g).tolist(), torch.randint(2, 20, (5,), generator=g).tolist())
                       for _ in range(4)], 0)


def lm_loss(model):
    from kdbench.method import cross_entropy

    return lambda b: LossOutput(cross_entropy(model(input_ids=b.input_ids).logits, b.labels))


def test_unreadable_or_foreign_checkpoint_is_not_trusted(tmp_path, caplog):
    tok = build_word_tokenizer([f"w{i}" for i in range(24)])
    cfg = TrainConfig(steps=3, batch_size=4, lr=1e-2, checkpoint_every=1, warmup_steps=0)
    ref = gpt2(tok, 0)
    Trainer(cfg, None, progress=False).fit(ref, lm_loss(ref), tiny_lm_batches())
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    m = gpt2(tok, 0)
    with caplog.at_level("WARNING", logger="kdbench"):
        Trainer(cfg, tmp_path, progress=False).fit(m, lm_loss(m), tiny_lm_batches())
    assert "ignoring unreadable checkpoint" in caplog.text
    for k, v in ref.state_dict().items():
        assert torch.equal(v, m.state_dict()[k])
    # a checkpoint written with other settings (here: lr) must not be resumed
    other = TrainConfig(steps=3, batch_size=4, lr=5e-2, checkpoint_every=1, warmup_steps=0)
    m2 = gpt2(tok, 0)
    Trainer(other, tmp_path, progress=False).fit(m2, lm_loss(m2), tiny_lm_batches())  # leaves step-2 checkpoint
    m3 = gpt2(tok, 0)
    with caplog.at_level("WARNING", logger="kdbench"):
        Trainer(cfg, tmp_path, progress=False).fit(m3, lm_loss(m3), tiny_lm_batches())
    assert "written with other training settings" in caplog.text
    for k, v in ref.state_dict().items():
        assert torch.equal(v, m3.state_dict()[k])


def test_temp_file_of_a_killed_checkpoint_write_is_removed(tmp_path):
    tok = build_word_tokenizer([f"w{i}" for i in range(24)])
    torn = tmp_path / ".checkpoint.pt.k1l2.tmp"  # what a kill during atomic_torch_save leaves
    torn.write_bytes(b"half a checkpoint")
    m = gpt2(tok, 0)
    Trainer(TrainConfig(steps=2, batch_size=4, lr=1e-2, checkpoint_every=1), tmp_path, progress=False).fit(
        m, lm_loss(m), tiny_lm_batches())
    assert not torn.exists() and (tmp_path / "checkpoint.pt").exists()


def test_out_of_memory_names_the_step_and_the_fix():
    tok = build_word_tokenizer([f"w{i}" for i in range(24)])
    m = gpt2(tok, 0)
    calls = [0]

    def oom(b):
        calls[0] += 1
        if calls[0] == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return lm_loss(m)(b)

    with pytest.raises(TrainingOutOfMemoryError, match=r"out of device memory at step 2 \(batch_size 4, grad_accum 1\)"
                                                        r".*raise grad_accum"):
        Trainer(TrainConfig(steps=3, batch_size=4, lr=1e-3), None, progress=False).fit(m, oom, tiny_lm_batches())


# ------------------------------------------------------------------------------------------------
# atomic writes


def test_atomic_write_keeps_the_old_file_when_the_writer_dies(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"v": 1})

    class Boom:
        def __str__(self):
            raise RuntimeError("crash while serialising")

    with pytest.raises(RuntimeError):
        atomic_write_json(target, {"v": Boom()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind
    atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n"


# ------------------------------------------------------------------------------------------------
# one process per folder

HOLD = ("import sys, time; sys.path.insert(0, {root!r}); from kdbench.lock import FolderLock; "
        "FolderLock({folder!r}).acquire(); print('locked', flush=True); time.sleep(60)")


def hold_lock(folder):
    p = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(micro_run.ROOT), folder=str(folder))],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_process_on_one_folder_fails_at_once(tmp_path, capsys):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        t0 = time.time()
        code = main(micro_run.MICRO + ["--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and time.time() - t0 < 30
        assert f"output folder '{out}' is in use by another kdbench process (PID {holder.pid}" in err
        assert "use another --out" in err
        assert not (out / "cells").exists()
        with pytest.raises(FolderLockedError, match="stage cache"):
            FolderLock(out, "stage cache").acquire()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = hold_lock(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock_file = tmp_path / ".kdbench.lock"
    assert f"pid={holder.pid}" in lock_file.read_text()  # left behind by the dead owner
    with FolderLock(tmp_path) as lk:
        assert lk.held and f"pid={os.getpid()}" in lock_file.read_text()
    assert not lock_file.exists()
    # an old-style lock file holding only a dead PID is taken over too
    lock_file.write_text(str(holder.pid))
    with FolderLock(tmp_path) as lk:
        assert lk.held


def test_lock_in_an_unwritable_place_says_so(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FolderLockedError, match="cannot create the lock file.*choose a folder you can write to"):
        FolderLock(blocker / "sub").acquire()


def test_ctrl_c_releases_the_lock_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    from kdbench.runner import Benchmark

    def interrupted(self):
        assert (self.out / ".kdbench.lock").exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(Benchmark, "_run", interrupted)
    assert main(micro_run.MICRO + ["--out", str(tmp_path)]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert not (tmp_path / ".kdbench.lock").exists()


# ------------------------------------------------------------------------------------------------
# benchmark level: SIGKILL at exact moments, rerun, compare with an uninterrupted run


def test_stage_finished_but_not_renamed_is_not_rebuilt(tmp_path):
    from kdbench.config import BenchConfig
    from kdbench.runner import Benchmark

    b = Benchmark(BenchConfig(), tmp_path / "out", tmp_path / "cache", progress=False)
    calls = []
    folder, key = b.stages.stage("thing", {"x": 1}, lambda d: calls.append(d) or {"n": 1})
    assert calls and is_done(folder)
    # simulate a kill between DONE and the rename: the .partial folder holds a complete stage
    partial = folder.parent / f".{folder.name}.partial"
    folder.rename(partial)
    again, key2 = b.stages.stage("thing", {"x": 1}, lambda d: calls.append(d))
    assert again == folder and key2 == key and len(calls) == 1 and is_done(folder) and not partial.exists()


def test_sigkill_at_four_moments_then_rerun_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setattr("kdbench.report.plots.make_plots", lambda run, plot_dir: ([], []))  # see micro_run
    ref_out, ref_cache = tmp_path / "ref", tmp_path / "ref-cache"
    assert main(micro_run.MICRO + ["--out", str(ref_out), "--cache-dir", str(ref_cache)]) == 0

    out = tmp_path / "killed"  # its own cache (<out>/cache): every stage really is interrupted
    args = micro_run.MICRO + ["--out", str(out)]
    moments = [
        ("ckpt:.teacher-base-:2", "pretrain teacher: resumed from step 4"),  # stage in .partial
        ("done:.student-base-", "stage student-base: cached"),  # stage complete, killed before the rename
        ("ckpt:cells/train:2", "kd (gpt2-toy-xs): resumed from step 4"),  # train cell
        ("gens:3", None),  # eval cell with generations written, no metrics yet
    ]
    logs = []
    for i, (kill, _) in enumerate(moments):
        before = {p: p.stat().st_mtime_ns for p in out.glob("**/DONE") if ".partial" not in str(p)}
        log = tmp_path / f"run{i}.log"
        # a forked child: a real process, killed by SIGKILL, that need not import torch again
        assert micro_run.fork_run(kill, args, log) == -signal.SIGKILL, (kill, log.read_text()[-2000:])
        assert (out / ".kdbench.lock").exists()  # the next run must take the stale lock over
        for p, t in before.items():  # finished work is never recomputed
            assert p.exists() and p.stat().st_mtime_ns == t, p
        logs.append(log.read_text())
    final = tmp_path / "final.log"
    assert micro_run.fork_run("none", args, final) == 0, final.read_text()[-3000:]
    logs = logs[1:] + [final.read_text()]  # each run's log shows how it resumed the previous kill
    for (kill, expect), log in zip(moments, logs):
        if expect:
            assert expect in log, (kill, log[-3000:])
    assert "train gpt2-toy-xs/kd: done, skipping" in logs[-1]
    assert (out / "leaderboard.json").read_bytes() == (ref_out / "leaderboard.json").read_bytes()
    assert micro_run.eval_metrics(out) == micro_run.eval_metrics(ref_out)
    assert micro_run.trained_weights(out, out / "cache") == micro_run.trained_weights(ref_out, ref_cache)
    assert not list(out.glob("**/*.partial")) and not list(out.glob("**/checkpoint.pt"))


def test_a_finished_training_releases_its_model_and_optimizer():
    # The Accelerator lives for the whole process; if it kept what it prepared, every train cell's
    # student, gradients and optimizer moments would stay in memory until the run ends.
    import gc
    import weakref

    tok = build_word_tokenizer([f"w{i}" for i in range(24)])
    m = gpt2(tok, 0)
    Trainer(TrainConfig(steps=2, batch_size=4, lr=1e-2, warmup_steps=0), None, progress=False).fit(
        m, lm_loss(m), tiny_lm_batches())
    grads = [weakref.ref(p.grad) for p in m.parameters() if p.grad is not None]
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None, "the trained model is still referenced after fit (by the Accelerator?)"
    assert all(g() is None for g in grads)
