"""The tuning protocol: every method trained at every point of the same grid, the point selected on
the dev split, and only the selected model evaluated on test.

    --tune lr=1e-3,3e-3 --tune steps=200,400 [--tune-metric validity]

Grid keys are TrainConfig fields (`lr`, `steps`, `batch_size`, ...; a `distill.` prefix is accepted)
applied on top of each method's own resolved budget, so every method sees the same grid. Each point
is its own train cell (cells/train/<student>/<method>/tune-<point>/...); its dev score (the train
task's primary metric, or --tune-metric, at a fixed sampling seed, averaged over training seeds) is
recorded in its result.json, and cells/train/<student>/<method>/tuning.json holds the grid, every
point's dev score, the selected point and the tuning cost. The leaderboard row of a method is its
selected point's model; the report adds a tuning table.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

from .config import TrainConfig
from .errors import ConfigError


def parse_grid(tune: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """{'lr': [1e-3, 3e-3], 'steps': [200]} -> the grid's points, in a stable order."""
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    keys = []
    for key, values in tune.items():
        name = key.split(".", 1)[1] if key.startswith("distill.") else key
        if name not in fields:
            raise ConfigError(f"--tune {key}: not a training setting; valid: {', '.join(sorted(fields))}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--tune {key}: needs a list of values, e.g. --tune {name}=1e-3,3e-3")
        if len({repr(v) for v in values}) != len(values):  # a repeated point trains the same model twice
            raise ConfigError(f"--tune {key}: lists a value more than once ({values}); list each once")
        keys.append((name, values))
    return [dict(zip([k for k, _ in keys], combo)) for combo in itertools.product(*[v for _, v in keys])]


def point_label(point: dict[str, Any]) -> str:
    """A folder-safe label: 'lr=0.001_steps=200'."""
    return "_".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(point.items()))


def select(scores: dict[str, list[float]], higher_is_better: bool) -> str:
    """The grid point (label) with the best mean dev score over training seeds (first wins a tie)."""
    means = {p: sum(s) / len(s) for p, s in scores.items() if s and all(math.isfinite(x) for x in s)}
    if not means:
        raise ConfigError("tuning: no grid point has a finite dev score")
    best = max(means.values()) if higher_is_better else min(means.values())
    return next(p for p in scores if means.get(p) == best)
