"""Plots of the leaderboard's numbers: metric bars per task, training curves, scaling with student size."""
from __future__ import annotations

import math
import re
from pathlib import Path

from .data import REFERENCE_ROWS, TEACHER, Key, Run, tasks
from .tables import human_count, student_label
from .figure import Figure, Styles, _axes_legend_entries, _finish, _grid, _method_handles, _new_figure, _save, _slug


def plot_bars(run: Run, st: Styles, out: Path) -> list[Figure]:
    figs = []
    several = len(run.students) > 1
    groups = run.students or [None]
    for task in tasks(run):
        metrics = [m for t, m in run.columns if t == task]
        methods = [m for m in run.methods if m != TEACHER]
        nrow, ncol = _grid(len(metrics))
        width = max(3.6, 0.28 * len(methods) * len(groups) + 1.4)
        fig = _new_figure(width * ncol, 3.0 * nrow + 0.8)
        axes = fig.subplots(nrow, ncol, squeeze=False)
        bw = 0.8 / max(len(methods), 1)
        any_failed = False
        labels = len(methods) * len(groups) <= 12  # value labels only while they fit above the bars
        for ax, metric in zip(axes.flat, metrics):
            col = (task, metric)
            hib = next(r["higher_is_better"] for r in run.rows if (r["task"], r["metric"]) == col)
            d = 3 if 0 < max(abs(r["mean"]) for r in run.rows if (r["task"], r["metric"]) == col) < 1 else 1
            lows, highs = [0.0], [0.0]
            xs, means, stds, colors, failed_x = [], [], [], [], []
            for gi, s in enumerate(groups):
                for mi, m in enumerate(methods):
                    x = gi + (mi - (len(methods) - 1) / 2) * bw
                    r = run.row((s, m), col)
                    if r is None:
                        if run.failed((s, m), col):
                            failed_x.append(x)
                        continue
                    xs.append(x)
                    means.append(r["mean"])
                    stds.append(r["std"])
                    colors.append(st.colors[m])
            # One bar call per panel: per-bar calls cost a lot of artist bookkeeping.
            if xs:
                ax.bar(xs, means, bw * 0.92, yerr=stds, color=colors, edgecolor="black", linewidth=0.4, capsize=2,
                       error_kw={"elinewidth": 0.8})
                lows += [m - s for m, s in zip(means, stds)]
                highs += [m + s for m, s in zip(means, stds)]
            if labels:  # at the end of the whisker, below it for negative bars
                for x, m, s in zip(xs, means, stds):
                    neg = m < 0
                    ax.annotate(f"{m:.{d}f}", (x, m - s if neg else m + s), xytext=(0, -2 if neg else 2),
                                textcoords="offset points", ha="center", va="top" if neg else "bottom", fontsize=7)
            if failed_x:  # failed shows as a red cross, never as a zero bar
                any_failed = True
                ax.plot(failed_x, [0] * len(failed_x), marker="x", color="#c00000", markersize=7, mew=2,
                        linestyle="none", clip_on=False, zorder=5)
            t = run.row((None, TEACHER), col)
            if t is not None:
                ax.axhline(t["mean"], color=st.colors[TEACHER], linestyle="--", linewidth=1.1)
                ax.axhspan(t["mean"] - t["std"], t["mean"] + t["std"], color=st.colors[TEACHER], alpha=0.06,
                           linewidth=0)
                lows.append(t["mean"] - t["std"])
                highs.append(t["mean"] + t["std"])
            # Start at 0 unless some mean is negative (a whisker below 0 alone does not move the axis).
            neg = min(means + ([t["mean"]] if t is not None else []), default=0.0) < 0
            lo, hi = (min(lows) if neg else 0.0), max(highs)
            span = (hi - lo) or 1.0
            ax.set_ylim(lo - 0.12 * span if neg else 0, hi + 0.12 * span)
            ax.set_title(f"{metric} ({'higher' if hib else 'lower'} is better)")
            ax.set_ylabel(metric)
            ax.set_xticks(range(len(groups)) if several else [])
            if several:
                ax.set_xticklabels([student_label(run, s) for s in groups])
            ax.set_xlim(-0.6, len(groups) - 0.4)
            ax.grid(axis="x", visible=False)
        for ax in list(axes.flat)[len(metrics):]:
            ax.set_visible(False)
        n = sorted({r["n_seeds"] for r in run.rows if r["task"] == task})
        _finish(fig, f"{task}: every metric per method (bars: mean ± std over {'/'.join(map(str, n))} seeds; "
                     f"dashed line: teacher)", _method_handles(st, run.methods, any_failed))
        png, svg = _save(fig, out, f"{_slug(task)}_metrics")
        figs.append(Figure("bars", png.stem, f"{task}: metrics per method",
                           "Bars: mean over seeds, whiskers: std; dashed line and band: the teacher; "
                           "red cross: failed cell.", png, svg))
    return figs


DIVERGENCE_TERM = re.compile(r"kl|jsd|^js$|tvd|single_step|div", re.I)
MAX_PANELS = 9


def _terms(histories: dict[Key, list[dict]]) -> list[str]:
    seen: dict[str, None] = {}
    for h in histories.values():
        for rec in h:
            for k, v in rec.items():
                numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
                if numeric and (k == "loss" or k.startswith("dev_") or DIVERGENCE_TERM.search(k)):
                    seen.setdefault(k, None)
    # loss first, then the dev curves (checkpoint selection, kdbench.selection), then the terms
    return sorted(seen, key=lambda k: (k != "loss", not k.startswith("dev_"), k))[:MAX_PANELS]


def plot_training(run: Run, st: Styles, out: Path) -> list[Figure]:
    several = len(run.students) > 1
    hist = {k: c["history"] for k, c in run.train.items()
            if isinstance(c.get("history"), list) and c["history"] and k in run.keys}
    if not hist:
        return []
    terms = _terms(hist)
    from matplotlib.ticker import MaxNLocator

    nrow, ncol = _grid(len(terms))
    fig = _new_figure(3.8 * ncol, 2.9 * nrow + 0.7)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax, term in zip(axes.flat, terms):
        for key in [k for k in run.keys if k in hist]:
            pts = [(r["step"], r[term]) for r in hist[key] if term in r and "step" in r
                   and isinstance(r[term], (int, float)) and math.isfinite(r[term])]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=st.colors[key[1]],
                    linestyle=st.linestyles[key[0]], marker=st.markers[key[1]], markersize=3, linewidth=1.3,
                    label=st.label(key, several))
        ax.set_title(term + (" (the method's objective)" if term == "loss" else
                             " (dev split; checkpoints selected on it)" if term.startswith("dev_") else ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training step")
        ax.set_ylabel(term)
    for ax in list(axes.flat)[len(terms):]:
        ax.set_visible(False)
    _finish(fig, "Training curves: each method's logged terms against optimisation steps",
            *_axes_legend_entries(axes), ncol=6)
    png, svg = _save(fig, out, "training_curves")
    return [Figure("training", png.stem, "Training curves",
                   "Loss, the dev-split curve when checkpoints are selected on dev, and the divergence terms "
                   "each method logs (history.json), against optimisation steps; a panel shows only the "
                   "methods that log its term.", png, svg)]


# ------------------------------------------------------------------------------------------------
# scaling


def plot_scaling(run: Run, st: Styles, out: Path) -> list[Figure]:
    students = [s for s in run.students if s in run.params]
    if len(students) < 2:
        return []
    figs = []
    for task in tasks(run):
        metrics = [m for t, m in run.columns if t == task]
        nrow, ncol = _grid(len(metrics))
        fig = _new_figure(4.0 * ncol, 3.1 * nrow + 0.8)
        axes = fig.subplots(nrow, ncol, squeeze=False)
        methods = [m for m in run.methods if m != TEACHER]
        for ax, metric in zip(axes.flat, metrics):
            col = (task, metric)
            for m in methods:
                pts = [(run.params[s], run.row((s, m), col)) for s in students]
                pts = sorted(((p, r) for p, r in pts if r is not None), key=lambda x: x[0])
                if not pts:
                    continue
                ax.errorbar([p for p, _ in pts], [r["mean"] for _, r in pts], yerr=[r["std"] for _, r in pts],
                            color=st.colors[m], marker=st.markers[m], markersize=5, capsize=2, linewidth=1.3,
                            label=st.names.get(m, m), linestyle=":" if m in REFERENCE_ROWS else "-")
            t = run.row((None, TEACHER), col)
            if t is not None:
                ax.axhline(t["mean"], color=st.colors[TEACHER], linestyle="--", linewidth=1, label="teacher")
            ax.set_xscale("log")
            # Ticks at the students' sizes only: readable, and no costly minor log labels.
            sizes = sorted({run.params[s] for s in students})
            ax.set_xticks(sizes, [human_count(n) for n in sizes])
            ax.minorticks_off()
            ax.set_xlim(sizes[0] / 1.5, sizes[-1] * 1.5)
            ax.set_xlabel("student parameters")
            ax.set_ylabel(metric)
            hib = next(r["higher_is_better"] for r in run.rows if (r["task"], r["metric"]) == col)
            ax.set_title(f"{metric} ({'higher' if hib else 'lower'} is better)")
        for ax in list(axes.flat)[len(metrics):]:
            ax.set_visible(False)
        _finish(fig, f"{task}: score against student size (mean ± std over seeds; dashed: teacher)",
                *_axes_legend_entries(axes))
        png, svg = _save(fig, out, f"{_slug(task)}_scaling")
        figs.append(Figure("scaling", png.stem, f"{task}: scaling",
                           "Each method's score against the student's parameter count (log scale); dashed: "
                           "the teacher.", png, svg))
    return figs
