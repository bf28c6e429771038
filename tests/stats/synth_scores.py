"""Synthetic per-example scores with known truth, for the statistics tests.

value(model, train seed s, prompt p, eval seed e) = mu_model + a_s + b_p + c_model,p + d_s,p + e_s,p,e
  a_s    training-seed random effect (one draw per model and seed: seeds of different models are
         different runs)                                                   sd_seed
  b_p    prompt difficulty, shared by every model                          sd_prompt
  c      method x prompt effect (each model's own draw)                    sd_mp
  d      seed x prompt effect                                              sd_cell
  e      evaluation-seed (sampling) noise                                  sd_eval
All effects have mean 0, so the population mean of a model is mu_model and the true paired
difference of two models is the difference of their mu.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

# The regime the coverage tests check (measured over 5500 simulations: per-model CI 94.7%, paired 95.4%): 4 training
# seeds with a seed effect about the size of the prompt-level standard error, moderate per-cell noise.
CALIBRATED = dict(S=4, P=100, E=2, sd_seed=0.4, sd_prompt=3.0, sd_mp=1.0, sd_cell=1.0, sd_eval=2.0)


@lru_cache(maxsize=None)
def _ids(S: int, P: int, E: int) -> pd.DataFrame:
    s, p, e = np.meshgrid(np.arange(S), np.arange(P), np.arange(E), indexing="ij")
    return pd.DataFrame({"train_seed": s.ravel() * 10 + 10, "eval_seed": e.ravel() + 1,
                         "example_id": pd.Series([f"ex{i:04d}" for i in range(P)])[p.ravel()].to_numpy()})


def simulate(rng: np.random.Generator, means: dict[str, float], *, S=4, P=100, E=2, sd_seed=0.5,
             sd_prompt=3.0, sd_mp=1.0, sd_cell=1.0, sd_eval=2.0, column="v") -> dict[str, pd.DataFrame]:
    """{model key: scores of that model} on one shared prompt set."""
    ids = _ids(S, P, E)
    b = rng.normal(0, sd_prompt, P)
    out = {}
    for model, mu in means.items():
        y = (mu + rng.normal(0, sd_seed, S)[:, None, None] + (b + rng.normal(0, sd_mp, P))[None, :, None]
             + rng.normal(0, sd_cell, (S, P))[:, :, None] + rng.normal(0, sd_eval, (S, P, E)))
        out[model] = ids.assign(model=model, **{column: y.ravel()})
    return out


def frame(parts: dict[str, pd.DataFrame], task: str | None = None) -> pd.DataFrame:
    df = pd.concat(parts.values(), ignore_index=True)
    return df.assign(task=task) if task else df
