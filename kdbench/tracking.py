"""Experiment trackers (`--report-to tensorboard|wandb|trackio`) through accelerate's tracker API.

Each trained student (a train cell, or the SFT stage behind the `sft` row) is one tracker run named
`<student>/<method>[/train-seed<s>]`: its frozen config as hyperparameters, every optimizer step's
loss terms, learning rate and gradient norm as `train/...` scalars, and, once evaluation is done,
the mean of each metric over evaluation seeds as `eval/<task>/<metric>` at the last training step.
TensorBoard writes under `<out>/tensorboard/<run name>/` (`tensorboard --logdir <out>/tensorboard`)
and needs no network; wandb and trackio are imported only when chosen. Only the main process logs.
Trackers observe, they change no number: `report_to` is in no cache key.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from .errors import ConfigError

log = logging.getLogger("kdbench")

TRACKERS = ("tensorboard", "wandb", "trackio")
PROJECT = "kdbench"  # the wandb / trackio project every run goes to


def check_available(kind: str) -> None:
    """Fail before any training when the chosen tracker's package is missing."""
    if kind == "none":
        return
    if kind not in TRACKERS:
        raise ConfigError(f"config key 'report_to': '{kind}' is not one of none, {', '.join(TRACKERS)}")
    if importlib.util.find_spec(kind) is None:
        raise ConfigError(f"--report-to {kind}: the '{kind}' package is not installed; "
                          f"pip install 'kdbench[{kind}]' (or --report-to none)")


def run_name(student_label: str, method: str, train_seed: int | None) -> str:
    return f"{student_label}/{method}" + (f"/train-seed{train_seed}" if train_seed is not None else "")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {'a.b': scalar}: trackers' hyperparameter tables take flat scalars only."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (bool, int, float, str)) or v is None:
            out[key] = "null" if v is None else v
        else:  # lists and the rest: their text, so the value is still visible
            out[key] = str(v)
    return out


class RunTracker:
    """One tracker run of accelerate's tracker API (started, given the config, logged to, finished)."""

    def __init__(self, kind: str, name: str, out_dir: Path, config: dict[str, Any] | None = None):
        from accelerate import tracking

        check_available(kind)
        if kind == "tensorboard":
            self.tracker = tracking.TensorBoardTracker(name, logging_dir=str(Path(out_dir) / "tensorboard"))
        elif kind == "wandb":  # one stable id per run name: the eval metrics resume the training run
            self.tracker = tracking.WandBTracker(PROJECT, name=name, id=_safe_id(name), resume="allow")
        else:
            self.tracker = tracking.TrackioTracker(PROJECT, name=name, resume="allow")
        self.tracker.start()
        if config:
            self.tracker.store_init_configuration(flatten(config))

    def log(self, values: dict[str, float], step: int) -> None:
        self.tracker.log({k: float(v) for k, v in values.items()}, step=step)

    def log_step(self, step: int, logs: dict[str, float]) -> None:
        """One optimizer step's loss terms (the trainer's per-step logs, before any averaging)."""
        self.log({f"train/{k}": v for k, v in logs.items()}, step)

    def finish(self) -> None:
        self.tracker.finish()


def _safe_id(name: str) -> str:
    return "kdbench-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def open_run(kind: str, name: str, out_dir: Path, config: dict[str, Any] | None = None, main: bool = True):
    """A RunTracker, or None when tracking is off or this is not the main process."""
    if kind == "none" or not main:
        return None
    return RunTracker(kind, name, out_dir, config)


def log_eval(kind: str, name: str, out_dir: Path, records: list[dict], step: int) -> None:
    """Mean over evaluation seeds of every metric of one trained model, per task, at its last step."""
    if kind == "none" or not records:
        return
    sums: dict[str, list[float]] = {}
    for r in records:
        for metric, v in (r.get("metrics") or {}).items():
            if isinstance(v, (int, float)):
                sums.setdefault(f"eval/{r['task']}/{metric}", []).append(float(v))
    run = RunTracker(kind, name, out_dir)
    try:
        run.log({k: sum(v) / len(v) for k, v in sums.items()}, step)
    finally:
        run.finish()
