"""Experiment trackers (kdbench.tracking, `--report-to`): TensorBoard offline holds every step's
loss terms exactly as the trainer computed them and the eval means; wandb/trackio are never
imported unless chosen, and a missing package fails up front with the install command."""
from __future__ import annotations

import sys

import pytest
import torch

from kdbench import tracking
from kdbench.config import TrainConfig
from kdbench.errors import ConfigError
from kdbench.method import cross_entropy
from kdbench.trainer import LossOutput, Trainer
from fixtures import tensorboard_scalars as scalars, tiny_gpt2

pytestmark = pytest.mark.usefixtures("one_thread")


def batches():
    from kdbench.data import collate

    g = torch.Generator().manual_seed(0)
    while True:
        yield collate([(torch.randint(2, 24, (3,), generator=g).tolist(),
                        torch.randint(2, 24, (2 + i,), generator=g).tolist()) for i in range(4)], pad_id=0)


def test_tensorboard_holds_every_steps_losses_and_the_config(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` now fails: it must not happen
    monkeypatch.setitem(sys.modules, "trackio", None)
    model = tiny_gpt2()
    cfg = TrainConfig(steps=5, batch_size=4, lr=1e-2, log_every=5, warmup_steps=0)
    trainer = Trainer(cfg, None, device="cpu", progress=False)
    per_step = []

    def loss_fn(b):
        out = LossOutput(cross_entropy(model(input_ids=b.input_ids).logits, b.labels))
        per_step.append(float(out.loss.detach()))
        return out

    run = tracking.open_run("tensorboard", "gpt2-toy-xs/kd/train-seed1", tmp_path, {"method": "kd", "train": {"lr": 0.01}})
    trainer.tracker = run
    history = trainer.fit(model, loss_fn, batches())
    run.finish()
    logdir = tmp_path / "tensorboard" / "gpt2-toy-xs" / "kd" / "train-seed1"
    got = scalars(logdir)
    # every step, not only the history's 5-step mean
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4, 5]
    assert [v for _, v in got["train/loss"]] == pytest.approx(per_step, rel=1e-6)
    assert sum(v for _, v in got["train/loss"]) / 5 == pytest.approx(history[-1]["loss"], rel=1e-6)
    assert {"train/grad_norm", "train/lr"} <= set(got)
    assert list(logdir.rglob("hparams.yml"))  # the run config

    records = [{"task": "toy", "metrics": {"validity": 40.0, "rougeL": 10.0}},
               {"task": "toy", "metrics": {"validity": 60.0, "rougeL": 30.0}}]
    tracking.log_eval("tensorboard", "gpt2-toy-xs/kd/train-seed1", tmp_path, records, step=5)
    got = scalars(logdir)
    assert got["eval/toy/validity"] == [(5, pytest.approx(50.0))] and got["eval/toy/rougeL"] == [(5, pytest.approx(20.0))]


def test_off_and_other_ranks_log_nothing(tmp_path):
    assert tracking.open_run("none", "x", tmp_path) is None
    assert tracking.open_run("tensorboard", "x", tmp_path, main=False) is None
    tracking.log_eval("none", "x", tmp_path, [{"task": "t", "metrics": {"m": 1.0}}], 1)
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.parametrize("kind", ["wandb", "trackio"])
def test_a_missing_tracker_package_fails_up_front(kind, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == kind else real(name, *a))
    with pytest.raises(ConfigError, match=rf"pip install 'kdbench\[{kind}\]'"):
        tracking.check_available(kind)


def test_flatten_makes_hparams_scalars():
    flat = tracking.flatten({"train": {"lr": 0.1, "seed": 3}, "peft": None, "targets": ["q", "v"], "on": True})
    assert flat == {"train.lr": 0.1, "train.seed": 3, "peft": "null", "targets": "['q', 'v']", "on": True}


@pytest.mark.parametrize("kind", ["wandb", "trackio"])
def test_wandb_and_trackio_get_the_project_run_config_and_steps(kind, tmp_path, monkeypatch):
    """Stand-in modules record what accelerate's tracker passes to wandb / trackio (neither is installed
    here, and neither may reach the network in a test)."""
    import importlib.util
    import types

    calls: dict = {"log": []}

    class Run:
        def log(self, values, step=None):
            calls["log"].append((step, dict(values)))

        def finish(self):
            calls["finished"] = True

    fake = types.ModuleType(kind)
    fake.init = lambda **kw: calls.update(init=kw) or Run()
    fake.config = types.SimpleNamespace(update=lambda values, **kw: calls.update(config=dict(values)))
    monkeypatch.setitem(sys.modules, kind, fake)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == kind else real(name, *a))
    run = tracking.open_run(kind, "gpt2-toy-xs/kd/train-seed1", tmp_path, {"train": {"lr": 0.01}})
    run.log_step(3, {"loss": 1.5, "lr": 0.01})
    run.finish()
    tracking.log_eval(kind, "gpt2-toy-xs/kd/train-seed1", tmp_path, [{"task": "toy", "metrics": {"validity": 50.0}}], 6)
    assert calls["init"]["project"] == "kdbench" and calls["init"]["name"] == "gpt2-toy-xs/kd/train-seed1"
    assert calls["init"]["resume"] == "allow"  # the eval metrics continue the training run
    if kind == "wandb":
        assert calls["init"]["id"] == "kdbench-gpt2-toy-xs-kd-train-seed1"
    assert calls["config"] == {"train.lr": 0.01}
    assert calls["log"] == [(3, {"train/loss": 1.5, "train/lr": 0.01}), (6, {"eval/toy/validity": 50.0})]
    assert calls["finished"] and not (tmp_path / "tensorboard").exists()
