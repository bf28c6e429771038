"""Plots of the verdicts: forest plots of paired deltas to the baseline, and bootstrap rank intervals.

Both read `run.verdicts` (report/verdicts.py); a significant delta is drawn in its method's colour,
one within noise in grey, so a reader sees at a glance which differences are real.
"""
from __future__ import annotations

from pathlib import Path

from .data import Run, tasks
from .figure import Figure, Styles, _finish, _grid, _new_figure, _save, _slug

GREY = "#b0b0b0"
MAX_PANELS = 12


def plot_forest(run: Run, st: Styles, out: Path) -> list[Figure]:
    """Per task: one panel per metric, each method's delta to the baseline with its paired 95% CI."""
    v = run.verdicts
    if v is None or not v.baseline:
        return []
    figs = []
    for task in tasks(run):
        metrics = [m for t, m in run.columns if t == task]
        recs = {m: [c for c in v.comparisons if c["task"] == task and c["metric"] == m
                    and c["baseline"] == v.baseline and c.get("baseline_student") == c.get("student")
                    and c["ci_low"] is not None]  # None: not computable on these scores
                for m in metrics}
        metrics = [m for m in metrics if recs[m]][:MAX_PANELS]
        if not metrics:
            continue
        rows, cols = _grid(len(metrics), 4)
        fig = _new_figure(3.2 * cols, 0.35 * max(len(r) for r in recs.values()) * rows + 1.4 * rows)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, metric in zip(axes.flat, metrics):
            cs = recs[metric]
            for y, c in enumerate(cs):
                label = c["method"] + (f" [{c['student']}]" if len(run.students) > 1 else "")
                color = st.colors.get(c["method"], "C0") if c["significant"] else GREY
                ax.errorbar([c["delta"]], [y], xerr=[[c["delta"] - c["ci_low"]], [c["ci_high"] - c["delta"]]],
                            fmt="o", color=color, capsize=3, ms=4)
                ax.text(1.02, y, label, transform=ax.get_yaxis_transform(), va="center", fontsize=7)
            ax.axvline(0, color="#444444", lw=0.8)
            ax.set_yticks([])
            ax.set_ylim(-0.7, len(cs) - 0.3)
            ax.invert_yaxis()
            hib = next((r["higher_is_better"] for r in run.rows if r["task"] == task and r["metric"] == metric), True)
            ax.set_title(f"{metric} {'↑' if hib else '↓'}")
            ax.set_xlabel(f"Δ vs {v.baseline}")
        for ax in list(axes.flat)[len(metrics):]:
            ax.set_visible(False)
        _finish(fig, f"{task}: paired difference to {v.baseline} (95% CI; grey: within noise after "
                     "Benjamini-Hochberg)")
        png, svg = _save(fig, out, f"{_slug(task)}_forest")
        figs.append(Figure("forest", png.stem, f"{task}: differences to {v.baseline}",
                           f"Each method minus {v.baseline} on the same prompts and seeds, with its paired 95% "
                           "bootstrap CI; coloured: significant after Benjamini-Hochberg correction over the "
                           "comparisons of its column; grey: within noise.", png, svg))
    return figs


def plot_ranks(run: Run, st: Styles, out: Path) -> list[Figure]:
    """Mean rank over every per-example column, with bootstrap rank intervals (>= 3 methods)."""
    v = run.verdicts
    if v is None or not v.ranks:
        return []
    ranks = v.ranks
    fig = _new_figure(6.0, 0.4 * len(ranks) + 1.2)
    ax = fig.subplots()
    for y, r in enumerate(ranks):
        method = r["model"].rpartition("/")[2]
        ax.errorbar([r["rank"]], [y], xerr=[[r["rank"] - r["ci_low"]], [r["ci_high"] - r["rank"]]], fmt="o",
                    color=st.colors.get(method, "C0"), capsize=3, ms=5)
    ax.set_yticks(range(len(ranks)))
    ax.set_yticklabels([r["model"].rpartition("/")[2] for r in ranks])
    ax.invert_yaxis()
    ax.set_xlabel("mean rank (1 = best)")
    n_cols = len(ranks[0]["columns_used"])
    _finish(fig, f"Mean rank over {n_cols} per-example metric column(s), 95% bootstrap intervals")
    png, svg = _save(fig, out, "ranks")
    return [Figure("ranks", png.stem, "Ranks across tasks and metrics",
                   "Each method's mean rank over the per-example metric columns, with a 95% bootstrap interval "
                   "(training seeds and prompts resampled together for all methods).", png, svg)]
