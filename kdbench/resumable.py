"""Batch iterators a checkpoint can resume exactly (see `ResumableBatches`)."""
from __future__ import annotations

from typing import Any, Callable, Iterator

from .data import Batch
from .errors import KdbenchError


def is_resumable(it: Any) -> bool:
    return callable(getattr(it, "state_dict", None)) and callable(getattr(it, "load_state_dict", None))


class ResumableBatches:
    """One batch per optimizer step from `step_fn(k, rb)`, resumable exactly.

    The trainer resumes a plain generator by replaying it to the checkpoint's step. That is exact
    only when batch k depends on nothing but k and the model at step k (gold data, or a fresh
    seeded rollout per step). Data that carries over between steps and was made by an earlier model
    (a rollout round used for several PPO steps, a replay buffer, an adaptive threshold computed
    from dev losses) would be regenerated with the restored, later model. Methods with such data
    keep it in `rb.state` (a dict of picklable values: tensors, Batches, lists, deques,
    random.Random, generator states), and draw model-independent inputs with `rb.draw(name)` from
    the deterministic `streams`; checkpoint.pt then holds the state and the number of items drawn
    per stream, and a resumed run continues from exactly there (streams are re-created by the
    method and fast-forwarded, which is cheap and exact for seeded example streams).
    """

    def __init__(self, step_fn: Callable[[int, "ResumableBatches"], Batch], **streams: Iterator):
        self.step_fn = step_fn
        self.state: dict[str, Any] = {}
        self.k = 0  # batches produced so far
        self._streams = streams
        self._drawn = {name: 0 for name in streams}

    def draw(self, name: str):
        self._drawn[name] += 1
        return next(self._streams[name])

    def __iter__(self) -> "ResumableBatches":
        return self

    def __next__(self) -> Batch:
        batch = self.step_fn(self.k, self)
        self.k += 1
        return batch

    def state_dict(self) -> dict:
        return {"k": self.k, "state": self.state, "drawn": dict(self._drawn)}

    def load_state_dict(self, saved: dict) -> None:
        missing = set(saved["drawn"]) - set(self._streams)
        if missing:
            raise KdbenchError(f"checkpoint data state names streams {sorted(missing)} that this method no longer "
                               f"draws from (it has {sorted(self._streams)}); delete the checkpoint to restart")
        for name, n in saved["drawn"].items():
            for _ in range(n - self._drawn[name]):
                next(self._streams[name])
            self._drawn[name] = n
        self.k = saved["k"]
        self.state = saved["state"]
