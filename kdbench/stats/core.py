"""Statistics over per-example scores: hierarchical-bootstrap CIs, paired comparisons, multiplicity
corrections, "best" sets and rank intervals. Pure numpy/pandas/scipy (no torch).

Data contract: `scores` has one row per (model, train_seed, eval_seed, example_id) with columns
model (str, "<student label>/<method>" or a bare name like "teacher"), train_seed (int), eval_seed
(int), example_id (str, shared by all models of a task) and float value columns (NaN = not
applicable). Functions for one task take that task's rows; only `rank_intervals` reads a `task`
column. Design: training seeds and prompts are crossed; eval seeds are nested in (seed, prompt).

MeanOf(col) estimates the mean over (training seed, prompt) cells of the cell's mean over eval
seeds; all-NaN cells are left out, every other cell weighs the same.

Hierarchical bootstrap: a replicate draws training seeds with replacement, then prompts with
replacement (one prompt draw for all drawn seeds, as prompts are crossed with seeds); a drawn cell
brings all its eval seeds. Seeds are drawn S - 1 at a time (Rao & Wu's rescaled bootstrap): drawing
S of S shrinks the seed-level variance by (S-1)/S. MeanOf runs it as draw-count weights w_s [S],
w_p [P]: value* = (w_s @ M @ w_p) / (w_s @ K @ w_p), M the [S, P] cell means (NaN -> 0), K their
non-NaN indicator. Custom statistics are recomputed on the resampled rows of the same draws, so for
one rng seed both paths see identical resamples. Intervals are bootstrap percentiles.

Known limits (tests/stats measure the calibrated regime): this two-factor ("pigeonhole", Owen 2007)
bootstrap counts the seed x prompt noise at both levels, so it is conservative where that noise
dominates (simulated per-example Rouge-L: paired CIs cover ~99%, not 95%); with one training seed
the seed level is degenerate and training-seed variance is not in the CI; with 2-4 seeds and a
large seed variance the CI is too narrow (S resampled runs give normal-like tails where a t with
S-1 df is due). Tables therefore carry n_train_seeds and std_between.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Callable, Iterable, Mapping, Sequence, Union

import numpy as np
import pandas as pd
from scipy import stats as sps


@dataclass(frozen=True)
class MeanOf:
    """Mean of a per-example value column (vectorised bootstrap)."""

    column: str
    name = property(lambda self: self.column)


@dataclass(frozen=True)
class Custom:
    """Any statistic `fn(df) -> float` recomputed on each resampled frame (ECE, corpus metrics).

    In a resampled frame `train_seed` is renumbered 0..S-1 by draw (a seed drawn twice counts as
    two runs); `example_id` is kept, so a prompt drawn twice appears as repeated rows."""

    fn: Callable[[pd.DataFrame], float]
    name: str = "custom"
    # With `columns`, fn gets {column: numpy array} of the resampled rows instead of a DataFrame:
    # the same resamples at a fraction of the cost (no DataFrame per replicate).
    columns: tuple[str, ...] | None = None


Statistic = Union[MeanOf, Custom]
CORRECTIONS = ("bh", "by", "holm", "none")


def as_statistic(stat: Statistic | str) -> Statistic:
    if isinstance(stat, (MeanOf, Custom)):
        return stat
    if isinstance(stat, str):
        return MeanOf(stat)
    raise TypeError(f"statistic must be a column name, MeanOf or Custom, not {type(stat).__name__}")


def split_model_key(model: str) -> tuple[str | None, str]:
    """'gpt2-toy-s/kd' -> ('gpt2-toy-s', 'kd'); 'teacher' -> (None, 'teacher')."""
    student, sep, method = str(model).rpartition("/")
    return (student or None, method) if sep else (None, str(model))


class _Prep:
    """One model's rows for one statistic on fixed seed and prompt axes (absent cells are empty)."""

    def __init__(self, df: pd.DataFrame, stat: Statistic, prompts: pd.Index | None = None,
                 seeds: pd.Index | None = None):
        need = ["train_seed", "eval_seed", "example_id"] + ([stat.column] if isinstance(stat, MeanOf) else [])
        if any(c not in df.columns for c in need):
            raise ValueError(f"scores need columns {need}; got {list(df.columns)}")
        self.stat, self.df = stat, df
        self.seeds = pd.Index(np.sort(df["train_seed"].unique())) if seeds is None else seeds
        self.prompts = pd.Index(np.sort(df["example_id"].astype(str).unique())) if prompts is None else prompts
        s, p = self.seeds.get_indexer(df["train_seed"]), self.prompts.get_indexer(df["example_id"].astype(str))
        keep, S, P = (s >= 0) & (p >= 0), len(self.seeds), len(self.prompts)
        flat = s[keep] * P + p[keep]
        if isinstance(stat, MeanOf):
            v = df[stat.column].to_numpy(dtype=float, na_value=np.nan)[keep]  # None/NA = not applicable
            ok = ~np.isnan(v)
            sums = np.bincount(flat[ok], weights=v[ok], minlength=S * P).reshape(S, P)
            cnt = np.bincount(flat[ok], minlength=S * P).reshape(S, P)
            self.K, self.M0 = (cnt > 0).astype(float), np.divide(sums, cnt, out=np.zeros((S, P)), where=cnt > 0)
        else:
            # rows sorted by cell, so a cell is the slice start[s, p] : start[s, p] + count[s, p]
            order = np.argsort(flat, kind="stable")
            self.rows = df.iloc[np.flatnonzero(keep)[order]].reset_index(drop=True)
            self.count = np.bincount(flat, minlength=S * P).reshape(S, P)
            self.start = (np.cumsum(self.count.ravel()) - self.count.ravel()).reshape(S, P)
            cols = stat.columns
            self.arrays = None if cols is None else {c: self.rows[c].to_numpy() if c in self.rows else
                                                     np.full(len(self.rows), np.nan) for c in cols}

    def has(self) -> np.ndarray:  # mask of the prompts with values
        return self.K.any(0) if isinstance(self.stat, MeanOf) else self.count.sum(0) > 0

    def take(self, mask: np.ndarray) -> "_Prep":
        """The same data on the prompts in `mask` (slicing for MeanOf)."""
        if not isinstance(self.stat, MeanOf):
            return _Prep(self.df, self.stat, self.prompts[mask], self.seeds)
        out = object.__new__(_Prep)
        out.__dict__.update(self.__dict__)
        out.prompts, out.M0, out.K = self.prompts[mask], self.M0[:, mask], self.K[:, mask]
        return out

    def value(self) -> float:
        if isinstance(self.stat, MeanOf):
            k = self.K.sum()
            return float(self.M0.sum() / k) if k else math.nan
        return float(self.stat.fn(self.rows if self.arrays is None else self.arrays))

    def _index_of(self, seed_idx: np.ndarray, prompt_idx: np.ndarray) -> np.ndarray:
        ct, st = (a[np.ix_(seed_idx, prompt_idx)].ravel() for a in (self.count, self.start))
        return np.repeat(st - np.cumsum(ct) + ct, ct) + np.arange(ct.sum())

    def df_of(self, seed_idx: np.ndarray, prompt_idx: np.ndarray) -> pd.DataFrame:
        """Rows of the drawn cells (seed_idx x prompt_idx), duplicates included, seeds renumbered."""
        ct, st = (a[np.ix_(seed_idx, prompt_idx)].ravel() for a in (self.count, self.start))
        out = self.rows.iloc[np.repeat(st - np.cumsum(ct) + ct, ct) + np.arange(ct.sum())].reset_index(drop=True)
        out["train_seed"] = np.repeat(np.repeat(np.arange(len(seed_idx)), len(prompt_idx)), ct)
        return out

    def replicates(self, ws: np.ndarray, wp: np.ndarray) -> np.ndarray:
        """Statistic under draw counts ws [B, S] (seeds) and wp [B, P] (prompts)."""
        if isinstance(self.stat, MeanOf):
            num, den = ((ws @ self.M0) * wp).sum(1), ((ws @ self.K) * wp).sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
        seeds, prompts = np.arange(ws.shape[1]), np.arange(wp.shape[1])  # Custom: recompute per replicate
        if self.arrays is not None:
            out = []
            for a, b in zip(ws.astype(int), wp.astype(int)):
                idx = self._index_of(np.repeat(seeds, a), np.repeat(prompts, b))
                out.append(float(self.stat.fn({c: v[idx] for c, v in self.arrays.items()})))
            return np.array(out)
        return np.array([float(self.stat.fn(self.df_of(np.repeat(seeds, a), np.repeat(prompts, b))))
                         for a, b in zip(ws.astype(int), wp.astype(int))])


def _draws(rng: np.random.Generator, n: int, size: int, m: int | None = None) -> np.ndarray:
    """Draw counts [size, n] of m (default n) draws from n items (faster than rng.multinomial)."""
    idx = rng.integers(0, n, size=(size, n if m is None else m)) + n * np.arange(size)[:, None]
    return np.bincount(idx.ravel(), minlength=size * n).reshape(size, n).astype(float)


def _seed_draws(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """n - 1 of n seeds (Rao & Wu 1988): unbiased bootstrap variance of a seed mean (n of n gives
    (n-1)/n of it); the rescaling weight n/(n-1) cancels in a ratio. One seed: degenerate."""
    return _draws(rng, n, size, max(n - 1, 1))


def _percentile(reps: np.ndarray, confidence: float) -> tuple[float, float]:
    r = reps[np.isfinite(reps)]
    q = np.quantile(r, [(1 - confidence) / 2, (1 + confidence) / 2]) if len(r) else (math.nan, math.nan)
    return float(q[0]), float(q[1])


def _std(x) -> float | None:
    x = np.asarray(x, dtype=float)[np.isfinite(np.asarray(x, dtype=float))]
    return float(np.std(x, ddof=1)) if len(x) > 1 else None


def _one_model(*dfs: pd.DataFrame) -> None:
    if any("model" in df.columns and df["model"].nunique() > 1 for df in dfs):
        raise ValueError("expected the rows of one model; split scores by the 'model' column first")


def model_ci(df: pd.DataFrame, statistic: Statistic | str, n_resamples: int = 2000,
             confidence: float = 0.95, seed: int = 0) -> dict:
    """Point estimate and hierarchical-bootstrap percentile CI of one model's statistic.

    std_between: sample std (ddof=1) over training seeds of the per-seed value (None with one seed).
    std_within: mean over training seeds of the std over eval seeds of the per-(seed, eval seed)
    value (None with one eval seed). With one training seed the seed level of the bootstrap is
    degenerate, so the CI covers prompt and eval-seed noise only.
    """
    _one_model(df)
    stat = as_statistic(statistic)
    prep, rng = _Prep(df, stat), np.random.default_rng(seed)  # one Generator: deterministic per seed
    prep = prep.take(prep.has())  # prompts without any value are not part of the estimand
    if not len(prep.prompts):
        raise ValueError("model_ci: no rows with values")
    ws, wp = _seed_draws(rng, len(prep.seeds), n_resamples), _draws(rng, len(prep.prompts), n_resamples)
    lo, hi = _percentile(prep.replicates(ws, wp), confidence)
    runs = df.groupby(["train_seed", "eval_seed"])
    if isinstance(stat, MeanOf):  # a seed's value weighs its cells equally, like the estimand
        k = prep.K.sum(1)
        per_seed, per_run = prep.M0.sum(1)[k > 0] / k[k > 0], runs[stat.column].mean()
    else:
        per_seed = [float(stat.fn(g)) for _, g in df.groupby("train_seed")]
        per_run = pd.Series({key: float(stat.fn(g)) for key, g in runs})
    within = per_run.groupby(level=0).std(ddof=1).dropna()  # per_run: (seed, eval seed) -> value
    return {"mean": prep.value(), "ci_low": lo, "ci_high": hi, "n_train_seeds": len(prep.seeds),
            "n_eval_seeds": int(df["eval_seed"].nunique()), "n_prompts": len(prep.prompts),
            "std_between": _std(per_seed), "std_within": float(within.mean()) if len(within) else None}


def _paired(pa: _Prep, pb: _Prep, n_resamples: int, confidence: float, seed: int) -> dict:
    """pa, pb on one prompt axis; compares them on the prompts both have."""
    mask = pa.has() & pb.has()
    if not mask.any():
        raise ValueError("paired comparison: the two models share no prompts with values")
    pa, pb = pa.take(mask), pb.take(mask)
    rng, B = np.random.default_rng(seed), n_resamples
    wa, wb = _seed_draws(rng, len(pa.seeds), B), _seed_draws(rng, len(pb.seeds), B)
    wp = _draws(rng, len(pa.prompts), B)  # one prompt draw for both models: the pairing
    reps = pa.replicates(wa, wp) - pb.replicates(wb, wp)
    reps = reps[np.isfinite(reps)]
    lo, hi, n = *_percentile(reps, confidence), len(reps)
    p = min(1.0, 2 * (min((reps <= 0).sum(), (reps >= 0).sum()) + 1) / (n + 1)) if n else math.nan
    va, vb = pa.value(), pb.value()
    return {"delta": va - vb, "ci_low": lo, "ci_high": hi, "p_value": float(p), "value_a": va, "value_b": vb,
            "n_prompts": len(pa.prompts), "n_train_seeds_a": len(pa.seeds), "n_train_seeds_b": len(pb.seeds)}


def paired_comparison(df_a: pd.DataFrame, df_b: pd.DataFrame, statistic: Statistic | str,
                      n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """delta = stat(a) - stat(b) on the prompts both have, with a paired hierarchical bootstrap.

    Each replicate applies ONE prompt draw to both models (the pairing) and draws each model's
    training seeds independently (seed k of A and seed k of B are unrelated runs).
    p_value: two-sided bootstrap p from the replicate distribution of delta*,
    p = min(1, 2 * (min(#{delta* <= 0}, #{delta* >= 0}) + 1) / (B + 1)); it inverts the percentile
    interval (p < 1 - confidence ~ the interval excludes 0) and the +1 keeps it above 0, so the
    smallest reachable p is 2 / (B + 1): choose B with that below alpha / n_comparisons.
    """
    _one_model(df_a, df_b)
    stat, prompts = as_statistic(statistic), _prompt_axis([df_a, df_b])
    return _paired(_Prep(df_a, stat, prompts), _Prep(df_b, stat, prompts), n_resamples, confidence, seed)


def _prompt_axis(frames: Iterable[pd.DataFrame]) -> pd.Index:
    return pd.Index(sorted(set().union(*(f["example_id"].astype(str).unique() for f in frames))))


def adjust_pvalues(pvalues: Sequence[float], method: str = "bh") -> np.ndarray:
    """Multiplicity-adjusted p-values; NaNs stay NaN and do not count in m.

    bh: Benjamini-Hochberg (FDR; valid under independence/positive dependence), by:
    Benjamini-Yekutieli (FDR under any dependence), both via scipy.stats.false_discovery_control;
    holm: Holm step-down (family-wise error under any dependence); none: unchanged.
    """
    p = np.asarray(pvalues, dtype=float)
    out, ok = p.copy(), ~np.isnan(p)
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction '{method}'; valid: {', '.join(CORRECTIONS)}")
    if method == "none" or not ok.any():
        return out
    q = p[ok]
    if method in ("bh", "by"):
        out[ok] = sps.false_discovery_control(q, method=method)
        return out
    order, m, adj = np.argsort(q, kind="stable"), len(q), np.empty(len(q))
    adj[order] = np.minimum(np.maximum.accumulate((m - np.arange(m)) * q[order]), 1.0)  # Holm step-down
    out[ok] = adj
    return out


def _setup(scores, statistic, models):
    """(statistic, {model: rows}, model order) from a scores frame or a {model: rows} mapping."""
    frames = dict(scores) if isinstance(scores, Mapping) else dict(iter(scores.groupby("model", sort=False)))
    stat = as_statistic(statistic)
    order = list(models) if models is not None else list(frames)
    if any(m not in frames for m in order):
        raise ValueError(f"no scores for model(s) {[m for m in order if m not in frames]}; have {list(frames)}")
    return stat, frames, order


def _pairs(models: list[str], baseline: str | None, mode: str) -> list[tuple[str, str]]:
    """Within each student group: (method, baseline) first, then later-vs-earlier pairs."""
    if mode not in ("all", "baseline"):
        raise ValueError(f"pairs must be 'all' or 'baseline', not '{mode}'")
    groups = {split_model_key(m)[0]: [x for x in models if split_model_key(x)[0] == split_model_key(m)[0]]
              for m in models}
    out = []
    for ms in groups.values():
        base = [m for m in ms if split_model_key(m)[1] == baseline]
        out += [(m, base[0]) for m in ms if base and m != base[0]]
        if mode == "all":
            out += [(b, a) for a, b in combinations([m for m in ms if m not in base], 2)]
    return out


def compare_table(scores: pd.DataFrame | Mapping[str, pd.DataFrame], statistic: Statistic | str, *,
                  task: str, metric: str | None = None, baseline: str | None = "sft",
                  higher_is_better: bool = True, alpha: float = 0.05, correction: str = "bh",
                  pairs: str = "all", extra_pairs: Iterable[tuple[str, str]] = (),
                  models: Sequence[str] | None = None, n_resamples: int = 2000,
                  confidence: float | None = None, seed: int = 0) -> list[dict]:
    """Paired comparisons for one (task, metric): every method vs `baseline` (a method name, matched
    within each student group) and, with pairs="all", every other pair within a student group
    (later model vs earlier one in `models` order). `extra_pairs` adds (model_a, model_b) pairs,
    e.g. across students. `correction` (BH by default) runs over all comparisons of this table. The
    CI level defaults to 1 - alpha; significant = p_adjusted < alpha and the CI excludes 0 (both, so a
    bolded cell never has a CI across 0). All comparisons use the same rng seed.

    Records: task, metric, method, baseline, delta (= method - baseline), ci_low, ci_high, p_value,
    p_adjusted, significant, and student, baseline_student (None for bare keys like 'teacher'),
    better ('method'/'baseline'/None by `higher_is_better`), n_prompts. Pairs with no prompt in common
    get no record.
    """
    stat, frames, order = _setup(scores, statistic, models)
    todo = _pairs(order, baseline, pairs) + [tuple(p) for p in extra_pairs]
    conf = 1 - alpha if confidence is None else confidence
    used = list(dict.fromkeys(x for pair in todo for x in pair))
    axis = _prompt_axis(frames[m] for m in used)
    preps = {m: _Prep(frames[m], stat, axis) for m in used}
    recs = []
    for a, b in todo:
        if not (preps[a].has() & preps[b].has()).any():
            continue  # nothing to pair (e.g. the metric does not apply to one model): no record
        r = _paired(preps[a], preps[b], n_resamples, conf, seed)
        (sa, ma), (sb, mb) = split_model_key(a), split_model_key(b)
        recs.append({"task": task, "metric": metric or stat.name, "method": ma, "baseline": mb,
                     **{k: r[k] for k in ("delta", "ci_low", "ci_high", "p_value")}, "p_adjusted": None,
                     "significant": False, "student": sa, "baseline_student": sb, "better": None,
                     "n_prompts": r["n_prompts"]})
    adj = adjust_pvalues([r["p_value"] for r in recs], correction)
    for r, q in zip(recs, adj):
        r["p_adjusted"] = float(q)
        r["significant"] = bool(q < alpha and (r["ci_low"] > 0 or r["ci_high"] < 0))
        if r["significant"]:
            r["better"] = "method" if (r["delta"] > 0) == higher_is_better else "baseline"
    return recs


def best_set(scores: pd.DataFrame | Mapping[str, pd.DataFrame], statistic: Statistic | str,
             higher_is_better: bool = True, *, alpha: float = 0.05, correction: str = "bh",
             models: Sequence[str] | None = None, n_resamples: int = 2000, seed: int = 0) -> dict:
    """The models not significantly worse than the best (by point estimate), for bolding.

    Every other model is compared with the best (paired bootstrap, `correction` over those m-1
    comparisons); a model is out only when significantly worse (p_adjusted < alpha and the CI at
    1 - alpha excludes 0). Returns {best, members (input order), values, comparisons}.
    Pass one student group's models: the teacher would otherwise be "the best".
    """
    stat, frames, order = _setup(scores, statistic, models)
    axis = _prompt_axis(frames[m] for m in order)
    preps = {m: _Prep(frames[m], stat, axis) for m in order}
    values = {m: p.value() for m, p in preps.items()}
    finite = [m for m in order if np.isfinite(values[m])]
    if not finite:
        return {"best": None, "members": [], "values": values, "comparisons": []}
    best = (max if higher_is_better else min)(finite, key=lambda m: values[m])
    comps = [dict(_paired(preps[m], preps[best], n_resamples, 1 - alpha, seed), model=m) for m in finite if m != best]
    out = {best}
    for c, q in zip(comps, adjust_pvalues([c["p_value"] for c in comps], correction)):
        c["p_adjusted"] = float(q)
        worse = c["ci_high"] < 0 if higher_is_better else c["ci_low"] > 0
        if not (q < alpha and worse):
            out.add(c["model"])
    return {"best": best, "members": [m for m in order if m in out], "values": values, "comparisons": comps}
