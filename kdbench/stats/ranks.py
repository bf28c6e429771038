"""Bootstrap rank intervals across tasks and metrics (for the rank plot), on the core bootstrap."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from .core import MeanOf, Statistic, _draws, _percentile, _Prep, _seed_draws, as_statistic


def rank_intervals(scores: pd.DataFrame, columns: Sequence[tuple[str, Statistic | str]],
                   higher_is_better: bool | Mapping[str, bool] = True, *,
                   models: Sequence[str] | None = None, n_resamples: int = 1000,
                   confidence: float = 0.95, seed: int = 0) -> list[dict]:
    """Bootstrap intervals of each model's mean rank (1 = best) over (task, statistic) columns.

    `scores` holds all tasks, with a `task` column. Each replicate draws every model's training
    seeds once (the same runs serve all tasks) and, per task, one prompt draw shared by all models
    over the prompts every model has; ranks are per column (ties averaged, direction from
    `higher_is_better`, a bool or {statistic name: bool}) and averaged over columns. Columns where
    a model lacks values are skipped (listed under 'columns_used'). Meant for >= 3 models.
    Returns [{model, rank, ci_low, ci_high, columns_used}] sorted by rank.
    """
    order = list(models) if models is not None else list(pd.unique(scores["model"]))
    if "task" not in scores.columns or len(order) < 2:
        raise ValueError("rank_intervals needs a 'task' column in scores and at least 2 models")
    rng = np.random.default_rng(seed)
    seeds = {m: pd.Index(np.sort(scores.loc[scores["model"] == m, "train_seed"].unique())) for m in order}
    ws = {m: _seed_draws(rng, max(len(seeds[m]), 1), n_resamples) for m in order}
    used, point, reps, wp_task = [], [], [], {}
    for task, col in columns:
        stat, rows = as_statistic(col), scores[scores["task"] == task]
        frames = {m: rows[rows["model"] == m] for m in order}
        if task not in wp_task:  # one prompt draw per task, over the prompts every model has
            prompts = pd.Index(sorted(set.intersection(*(set(f["example_id"].astype(str)) for f in frames.values()))))
            wp_task[task] = (prompts, _draws(rng, max(len(prompts), 1), n_resamples))
        prompts, wp = wp_task[task]
        preps = [_Prep(frames[m], stat, prompts, seeds[m]) for m in order] if len(prompts) else []
        v = np.array([p.value() for p in preps])
        if not len(prompts) or not np.isfinite(v).all():
            continue  # some model has no value in this column
        hib = higher_is_better if isinstance(higher_is_better, bool) else higher_is_better.get(stat.name, True)
        sign = -1.0 if hib else 1.0  # rank 1 = best
        r = np.stack([p.replicates(ws[m], wp) for p, m in zip(preps, order)], axis=1)  # [B, models]
        r = np.where(np.isfinite(r), r, v[None, :])  # an empty replicate keeps the point value
        point.append(sps.rankdata(sign * v))
        reps.append(sps.rankdata(sign * r, axis=1))
        used.append((task, stat.name))
    if not used:
        return []
    mean_point, mean_reps = np.mean(point, axis=0), np.mean(reps, axis=0)
    out = [dict(model=m, rank=float(mean_point[i]), columns_used=used,
                **dict(zip(("ci_low", "ci_high"), _percentile(mean_reps[:, i], confidence))))
           for i, m in enumerate(order)]
    return sorted(out, key=lambda d: d["rank"])
