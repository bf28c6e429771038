"""The verdict layer of a report: a CI on every leaderboard cell, paired comparisons, what to bold,
and the paper's (and the user's) claims checked against the comparisons.

All of it comes from kdbench.stats over the per-example scores (report/scores.py):
- every leaderboard row gains ci_low/ci_high (95%, hierarchical bootstrap: training seeds, then
  prompts with their evaluation seeds), n_train_seeds, n_eval_seeds, n_prompts, std_between and
  std_within;
- comparisons.json: per (task, metric) and student group, every method against the baseline and
  every pair, with a paired 95% CI, a p-value and the Benjamini-Hochberg adjusted p-value over the
  comparisons of that table;
- bold: every distilled student not significantly worse than the best of its group;
- findings.json / findings.md: each registered claim's verdict with its evidence.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from ..layout import REFERENCE_ROWS
from ..stats import adjust_pvalues, best_set, compare_table, model_ci, rank_intervals
from .data import Run
from .scores import Column, frames_by_model, load_columns, model_key

log = logging.getLogger("kdbench")

ALPHA = 0.05
CORRECTION = "bh"  # Benjamini-Hochberg over the comparisons of one table (scipy.stats.false_discovery_control)
N_RESAMPLES = 2000  # vectorised per-example means
N_RESAMPLES_RECOMPUTED = 300  # metrics recomputed on every resample (ECE): pandas per replicate


@dataclass
class Verdicts:
    comparisons: list[dict] = field(default_factory=list)
    bold: dict[tuple, set] = field(default_factory=dict)  # (student, task, metric) -> {method, ...}
    findings: list[dict] = field(default_factory=list)
    ranks: list[dict] = field(default_factory=list)
    baseline: str | None = None
    health: list[dict] = field(default_factory=list)  # metrics that cannot tell the students apart
    levels: dict[tuple, str] = field(default_factory=dict)  # (task, metric) -> example | cell
    columns: dict[tuple, Column] = field(default_factory=dict)  # every column's per-example frame (exports)

    def comparison(self, student, method, baseline, task, metric) -> dict | None:
        for c in self.comparisons:
            if (c["student"], c["method"], c["baseline"], c["task"], c["metric"]) == (student, method, baseline,
                                                                                    task, metric):
                return c
        return None


def _n(stat) -> int:
    return N_RESAMPLES if type(stat).__name__ == "MeanOf" else N_RESAMPLES_RECOMPUTED


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return float(f"{x:.6g}") if isinstance(x, float) else x


def attach_cis(run: Run, cols: dict[tuple[str, str], Column]) -> None:
    """Add the CI fields to every leaderboard row (rows of columns without scores get None)."""
    for r in run.rows:
        col = cols.get((r["task"], r["metric"]))
        frame = None if col is None else col.frame[col.frame["model"] == model_key(r["student"], r["method"])]
        if frame is None or not len(frame):
            r.update({k: None for k in ("ci_low", "ci_high", "n_train_seeds", "n_eval_seeds", "n_prompts",
                                        "std_between", "std_within")})
            continue
        try:
            ci = model_ci(frame, col.statistic, n_resamples=_n(col.statistic))
        except (ValueError, ZeroDivisionError) as e:
            log.warning("no CI for %s/%s on %s/%s: %s", r["student"], r["method"], r["task"], r["metric"], e)
            ci = {}
        r["ci_low"], r["ci_high"] = _clean(ci.get("ci_low")), _clean(ci.get("ci_high"))
        r["n_train_seeds"], r["n_eval_seeds"] = ci.get("n_train_seeds"), ci.get("n_eval_seeds")
        # a cell-level column has one pseudo-prompt per eval seed: report the seeds, not prompts
        r["n_prompts"] = ci.get("n_prompts") if col.level == "example" else None
        if col.level == "cell":
            r["n_eval_seeds"] = ci.get("n_prompts")
        r["std_between"], r["std_within"] = _clean(ci.get("std_between")), _clean(ci.get("std_within"))
        r["ci_level"] = col.level


def _groups(run: Run) -> dict[str | None, list[str]]:
    """Student -> its distilled methods in display order (reference rows left out)."""
    out: dict = {}
    for s, m in run.keys:
        if m not in REFERENCE_ROWS and s is not None:
            out.setdefault(s, []).append(m)
    return out


MIN_CELL_UNITS = 3  # a column without per-example scores needs >= 3 (training x evaluation) seeds per model


def _enough(col: Column) -> bool:
    """Whether a column supports a bootstrap: per-example scores, or enough seeds per model. Two
    evaluation seeds of one run would give a 'CI' from two numbers: no CI and no verdict instead."""
    if col.level == "example":
        return True
    units = col.frame.groupby("model")[["train_seed", "example_id"]].nunique()
    return bool(len(units)) and int((units["train_seed"] * units["example_id"]).min()) >= MIN_CELL_UNITS


def compute(run: Run, baseline: str | None) -> Verdicts:
    """CIs on run.rows (in place), comparisons, bold sets, rank intervals and findings."""
    every = load_columns(run)
    cols = {k: c for k, c in every.items() if _enough(c)}
    attach_cis(run, cols)
    v = Verdicts(baseline=baseline, levels={k: c.level for k, c in cols.items()}, columns=every)
    for (task, metric), col in cols.items():
        by_model = frames_by_model(col)
        for student, methods in _groups(run).items():
            keys = [model_key(student, m) for m in methods if model_key(student, m) in by_model]
            if not keys:
                continue
            frames = {k: by_model[k] for k in keys}
            n = _n(col.statistic)
            if len(keys) >= 2:
                # all pairs where the bootstrap is vectorised; for recomputed metrics the baseline
                # and the pairs the registered claims read (each pair recomputes the metric B times)
                cheap = type(col.statistic).__name__ == "MeanOf"
                extra = [] if cheap else _claim_pairs(student, keys)
                try:
                    recs = compare_table(frames, col.statistic, task=task, metric=metric,
                                         baseline=baseline if baseline in methods else None,
                                         higher_is_better=col.higher_is_better, alpha=ALPHA, correction=CORRECTION,
                                         pairs="all" if cheap else "baseline", extra_pairs=extra, models=keys,
                                         n_resamples=n)
                except ValueError as e:
                    log.warning("no comparisons on %s/%s [%s]: %s", task, metric, student, e)
                    recs = []
                for r in recs:
                    r["level"] = col.level
                    r["correction"] = CORRECTION
                v.comparisons += [{k: _clean(x) for k, x in r.items()} for r in recs]
                try:
                    bs = best_set(frames, col.statistic, col.higher_is_better, alpha=ALPHA, correction=CORRECTION,
                                  models=keys, n_resamples=n)
                    v.bold[(student, task, metric)] = {k.rpartition("/")[2] for k in bs["members"]}
                except ValueError:
                    pass
            else:
                v.bold[(student, task, metric)] = {keys[0].rpartition("/")[2]}
    v.ranks = _ranks(run, cols)
    v.health = metric_health(run)
    v.findings = _findings(v.comparisons)
    return v


def _ranks(run: Run, cols: dict[tuple[str, str], Column]) -> list[dict]:
    """Bootstrap rank intervals of the first student's methods over every example-level column."""
    groups = _groups(run)
    if not groups:
        return []
    student, methods = next(iter(groups.items()))
    keys = [model_key(student, m) for m in methods]
    if len(keys) < 3:
        return []
    import pandas as pd

    frames, columns, hib = [], [], {}
    for (task, metric), col in cols.items():
        if col.level != "example" or type(col.statistic).__name__ != "MeanOf":
            continue
        f = col.frame[col.frame["model"].isin(keys)][["model", "train_seed", "eval_seed", "example_id", metric]]
        frames.append(f.assign(task=task).rename(columns={metric: f"{task}/{metric}"}))
        columns.append((task, f"{task}/{metric}"))
        hib[f"{task}/{metric}"] = col.higher_is_better
    if not columns:
        return []
    merged = pd.concat(frames, ignore_index=True)
    try:
        return rank_intervals(merged, columns, hib, models=keys, n_resamples=500)
    except ValueError:
        return []


CHANCE = {"cls_acc": 50.0}  # two-way label-word classification
# Metrics with a ceiling: when every student is within SATURATION points of it, the metric cannot
# rank them (Dist-4 on short valid answers: no 4-gram repeats, so everyone scores ~100).
CEILING = {"dist4": 100.0, "mode_coverage": 100.0, "validity": 100.0, "cls_acc": 100.0}
SATURATION = 0.5


def metric_health(run: Run) -> list[dict]:
    """Columns where no distilled student differs from another (saturated or constant), or where every
    student sits at chance: such a metric says nothing about the methods, and the findings say so."""
    out = []
    for task, metric in run.columns:
        rows = [r for r in run.rows if r["task"] == task and r["metric"] == metric and r["student"] is not None
                and r["method"] not in REFERENCE_ROWS]
        if len(rows) < 2:
            continue
        means = [r["mean"] for r in rows]
        lo, hi = min(means), max(means)
        issue = None
        if hi - lo <= 1e-9 * max(1.0, abs(hi)):
            issue = f"every student scores {hi:g}"
        elif metric in CEILING and lo >= CEILING[metric] - SATURATION:
            issue = (f"saturated: every student scores {lo:.2f}-{hi:.2f}, within {SATURATION:g} of the "
                     f"ceiling {CEILING[metric]:g}")
        elif metric in CHANCE and all(r.get("ci_low") is not None and r["ci_low"] <= CHANCE[metric] <= r["ci_high"]
                                      for r in rows):
            issue = f"every student's 95% CI contains chance ({CHANCE[metric]:g}); range {lo:g}-{hi:g}"
        if issue:
            out.append({"task": task, "metric": metric, "issue": issue, "n_models": len(rows)})
    return out


def health_markdown(health: list[dict]) -> str:
    if not health:
        return ""
    lines = ["", "## Metrics that cannot tell the students apart in this run", "",
             "| task | metric | why |", "|---|---|---|"]
    lines += [f"| {h['task']} | {h['metric']} | {h['issue']} (over {h['n_models']} students) |" for h in health]
    return "\n".join(lines) + "\n"


def _claim_pairs(student: str, keys: list[str]) -> list[tuple[str, str]]:
    """(method, other) pairs of one student group that some registered claim compares."""
    try:
        from ..claims import CLAIMS
    except ImportError:
        return []
    out = []
    for name in CLAIMS.names():
        for r in CLAIMS.get(name).requirements:
            for m in ([r.method] if isinstance(r.method, str) else r.method):
                for o in ([r.other] if isinstance(r.other, str) else r.other):
                    pair = (model_key(student, m), model_key(student, o))
                    if set(pair) <= set(keys) and pair not in out and pair[::-1] not in out:
                        out.append(pair)
    return out


def _findings(comparisons: list[dict]) -> list[dict]:
    try:
        from ..claims import evaluate_claims
    except ImportError:  # the claims registry is optional for a report
        return []
    return evaluate_claims(comparisons)


def adjusted(pvalues: list[float]) -> list[float]:
    return list(adjust_pvalues(pvalues, CORRECTION))
