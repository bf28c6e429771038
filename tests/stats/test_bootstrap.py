"""model_ci: the hierarchical bootstrap's estimand, its levels, its calibration and its speed."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from kdbench.stats import Custom, MeanOf, model_ci
from synth_scores import CALIBRATED, simulate


def rows(values: dict[tuple[int, str, int], float], column="v") -> pd.DataFrame:
    """{(train_seed, example_id, eval_seed): value} -> scores of one model."""
    return pd.DataFrame([{"model": "s/m", "train_seed": s, "example_id": p, "eval_seed": e, column: v}
                         for (s, p, e), v in values.items()])


def test_ci_covers_the_true_mean_95_percent_of_the_time():
    # 800 synthetic benchmarks from a known model (mean 1.0): the 95% CI must cover 1.0 in 93-97%
    # of them (Monte-Carlo sd of the share: 0.8 points).
    rng = np.random.default_rng(2024)
    hits = 0
    n = 800
    for i in range(n):
        df = simulate(rng, {"s/m": 1.0}, **CALIBRATED)["s/m"]
        r = model_ci(df, "v", n_resamples=400, seed=i)
        hits += r["ci_low"] <= 1.0 <= r["ci_high"]
    assert 0.93 <= hits / n <= 0.97, hits / n


def test_a_dataset_without_variation_has_a_zero_width_ci():
    df = rows({(s, f"p{p}", e): 3.5 for s in (1, 2, 3) for p in range(20) for e in (1, 2)})
    r = model_ci(df, "v", n_resamples=300)
    assert r["mean"] == r["ci_low"] == r["ci_high"] == 3.5
    assert r["std_between"] == 0.0 and r["std_within"] == 0.0
    assert (r["n_train_seeds"], r["n_eval_seeds"], r["n_prompts"]) == (3, 2, 20)


def test_eval_seeds_of_a_prompt_travel_together():
    # Within each (seed, prompt) cell the eval seeds are +x and -x around 2.0, so every cell mean is
    # exactly 2.0: resampling cells whole gives a zero-width CI; resampling rows would not.
    rng = np.random.default_rng(0)
    vals = {}
    for s in (1, 2, 3):
        for p in range(30):
            x = rng.normal(0, 5)
            vals[(s, f"p{p}", 1)], vals[(s, f"p{p}", 2)] = 2.0 + x, 2.0 - x
    r = model_ci(rows(vals), "v", n_resamples=300)
    assert r["ci_low"] == pytest.approx(2.0) and r["ci_high"] == pytest.approx(2.0)
    assert r["std_within"] > 1.0  # the noise is there, it just averages out inside a cell


def test_training_seed_level_by_hand():
    # Two training runs, constant within each (0 and 1): each replicate draws S - 1 = 1 run, so the
    # replicates are exactly 0 or 1 and the 95% interval is [0, 1]; the point estimate is 0.5.
    df = rows({(s, f"p{p}", e): float(s == 2) for s in (1, 2) for p in range(10) for e in (1, 2)})
    r = model_ci(df, "v", n_resamples=400)
    assert (r["mean"], r["ci_low"], r["ci_high"]) == (0.5, 0.0, 1.0)
    assert r["std_between"] == pytest.approx(np.std([0, 1], ddof=1))


def test_one_training_seed_is_degenerate_at_the_seed_level():
    rng = np.random.default_rng(1)
    df = simulate(rng, {"s/m": 0.0}, S=1, P=50, E=2)["s/m"]
    r = model_ci(df, "v", n_resamples=300)
    assert r["n_train_seeds"] == 1 and r["std_between"] is None
    assert r["ci_low"] < r["mean"] < r["ci_high"]  # prompt and eval-seed noise still count


def test_nan_means_not_applicable():
    # prompts p0..p4 apply (value 1 or 3 by seed), p5..p9 are NaN everywhere: they are not prompts of
    # this metric; one cell (seed 2, p0) is NaN at one eval seed only and uses the other.
    vals = {(s, f"p{p}", e): (np.nan if p >= 5 else 1.0 + 2 * (s == 2)) for s in (1, 2) for p in range(10)
            for e in (1, 2)}
    vals[(2, "p0", 1)] = np.nan
    r = model_ci(rows(vals), "v", n_resamples=200)
    assert r["mean"] == 2.0 and r["n_prompts"] == 5


def test_std_between_and_within_by_hand():
    # seed 1: eval-seed means 0 and 2 (std sqrt 2); seed 2: 4 and 4 (std 0); per-seed means 1 and 4
    vals = {(1, p, 1): 0.0 for p in "ab"} | {(1, p, 2): 2.0 for p in "ab"}
    vals |= {(2, p, e): 4.0 for p in "ab" for e in (1, 2)}
    r = model_ci(rows(vals), "v", n_resamples=100)
    assert r["mean"] == 2.5
    assert r["std_between"] == pytest.approx(np.std([1.0, 4.0], ddof=1))
    assert r["std_within"] == pytest.approx((np.sqrt(2) + 0) / 2)


def test_mean_of_and_custom_agree():
    # On balanced data a plain row mean equals the cell-mean estimand, and both paths draw the
    # same resamples from one rng seed: identical point estimates and identical intervals.
    rng = np.random.default_rng(3)
    df = simulate(rng, {"s/m": 0.5}, S=3, P=40, E=2)["s/m"]
    fast = model_ci(df, MeanOf("v"), n_resamples=150, seed=7)
    slow = model_ci(df, Custom(lambda d: d["v"].mean(), "v"), n_resamples=150, seed=7)
    for k in ("mean", "ci_low", "ci_high", "std_between", "std_within"):
        assert fast[k] == pytest.approx(slow[k], rel=1e-12), k


def test_custom_statistic_sees_renumbered_seeds_and_whole_cells():
    seen = []

    def ece_like(d: pd.DataFrame) -> float:  # any non-mean statistic: here a spread of cell means
        seen.append(d)
        return float(d.groupby(["train_seed", "example_id"])["v"].mean().std())

    rng = np.random.default_rng(4)
    df = simulate(rng, {"s/m": 0.0}, S=3, P=15, E=2)["s/m"]
    r = model_ci(df, Custom(ece_like), n_resamples=20, seed=1)
    assert r["ci_low"] <= r["ci_high"]
    boot = seen[1]  # seen[0] is the full data (point estimate); then the 20 replicates
    assert set(boot["train_seed"]) <= {0, 1} and len(boot) == 2 * 15 * 2  # S-1 = 2 runs x 15 prompts x 2
    assert (boot.groupby(["train_seed", "example_id"]).size() % 2 == 0).all()  # eval seeds kept together


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(5)
    df = simulate(rng, {"s/m": 0.0}, S=3, P=50, E=2)["s/m"]
    assert model_ci(df, "v", n_resamples=200, seed=3) == model_ci(df, "v", n_resamples=200, seed=3)
    assert model_ci(df, "v", n_resamples=200, seed=3)["ci_low"] != model_ci(df, "v", n_resamples=200, seed=4)["ci_low"]


def test_rejects_the_rows_of_several_models_and_unknown_columns():
    rng = np.random.default_rng(6)
    parts = simulate(rng, {"s/a": 0.0, "s/b": 0.0}, S=2, P=5, E=1)
    with pytest.raises(ValueError, match="one model"):
        model_ci(pd.concat(parts.values()), "v")
    with pytest.raises(ValueError, match="columns"):
        model_ci(parts["s/a"], "rouge_l")


def test_2000_resamples_of_3_seeds_300_prompts_3_eval_seeds_well_under_a_second():
    rng = np.random.default_rng(7)
    df = simulate(rng, {"s/m": 0.0}, S=3, P=300, E=3)["s/m"]
    model_ci(df, "v", n_resamples=50)  # warm-up
    t = time.perf_counter()
    model_ci(df, "v", n_resamples=2000)
    assert time.perf_counter() - t < 0.5
