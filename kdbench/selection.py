"""Checkpoint selection on the dev split, as MiniLLM does: evaluate the student every `every` steps
on the train task's dev prompts, keep the best weights, and end training on them.

The selector rides on the trainer's `on_step` hook and its checkpointed `state`, so a resumed cell
continues with the same best-so-far (weights included) and selects exactly what an uninterrupted
run would. The dev curve goes into the training history (`dev_<metric>` on the evaluated steps)
and the chosen step into the cell's result.json.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("kdbench")


@dataclass
class SelectConfig:
    """Config section `select` (every setting is frozen into the train cell's key when enabled)."""

    every: int = 0  # evaluate on dev every N optimizer steps; 0 = off (the last step is the model)
    metric: str = ""  # value to maximise/minimise; "" = the train task's primary metric
    max_examples: int = 64  # dev prompts per evaluation (the first N)
    seed: int = 0  # sampling seed of the dev evaluation (the same prompts and noise at every step)

    def __post_init__(self) -> None:
        if self.every < 0:
            from .errors import ConfigError

            raise ConfigError(f"config key 'select.every': must be >= 0, got {self.every}")
        if self.max_examples < 1:
            from .errors import ConfigError

            raise ConfigError(f"config key 'select.max_examples': must be >= 1, got {self.max_examples}")


class DevSelector:
    """Keeps the best dev score, its step and a CPU copy of its weights (checkpointable state)."""

    def __init__(self, every: int, metric: str, higher_is_better: bool, score_fn: Callable[[Any], float]):
        self.every, self.metric, self.higher_is_better = every, metric, higher_is_better
        self.score_fn = score_fn  # model -> dev score (evaluates in eval mode, restores train mode)
        self.model = None
        self.state: dict[str, Any] = {"best": None, "step": None, "weights": None, "curve": []}

    def better(self, a: float, b: float | None) -> bool:
        if b is None or math.isnan(b):
            return not math.isnan(a)
        return a > b if self.higher_is_better else a < b

    def on_step(self, step: int, rec: dict) -> None:
        """Trainer hook (after each logged step): score on dev every `every` steps and at the end."""
        if self.model is None or step % self.every:
            return
        self._score(step, rec)

    def _score(self, step: int, rec: dict | None = None) -> None:
        was_training = self.model.training
        score = float(self.score_fn(self.model))
        if was_training:
            self.model.train()
        self.state["curve"].append({"step": step, self.metric: score})
        if rec is not None:
            rec[f"dev_{self.metric}"] = score
        if self.better(score, self.state["best"]):
            self.state.update(best=score, step=step,
                              weights={k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})
        log.info("dev %s at step %d: %.4g (best %.4g at step %s)", self.metric, step, score, self.state["best"],
                 self.state["step"])

    def finish(self, model, last_step: int) -> dict:
        """Score the final weights if the last step was not scored, then load the best ones."""
        if not self.state["curve"] or self.state["curve"][-1]["step"] != last_step:
            self.model = model
            self._score(last_step)
        if self.state["weights"] is not None and self.state["step"] != last_step:
            model.load_state_dict(self.state["weights"])
        return {"selected_step": self.state["step"], "selected_dev": self.state["best"], "metric": self.metric,
                "dev_curve": copy.deepcopy(self.state["curve"])}
