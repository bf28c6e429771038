"""Plots (PNG for the report, SVG for papers), each skipped cleanly when its data is absent.

Files under plots/ (<task> per evaluated task):
    <task>_metrics               every metric as bars per student and method, std whiskers, teacher line
    <task>_validity_vs_coverage  toy world: precision vs recall, one point per method
    <task>_mode_histogram        toy world: share of samples per valid answer (by rank) and invalid
    <task>_validity_by_family    toy world: % valid per prompt family and model
    <task>_exposure_bias         ExAccErr against generation length, one line per model
    <task>_reliability           reliability diagram per model (tasks with label words)
    training_curves              loss and logged divergence terms against steps, per method
    <task>_scaling               score against student parameter count (several students only)

Every method has one colour and marker in every plot of every report (known methods a fixed one,
others the next free one in method order), so figures can be compared side by side. Figures are
built on `matplotlib.figure.Figure` (no pyplot global state) and written byte-identically on a
rebuild (no dates in SVG, a fixed SVG id salt).
"""
from __future__ import annotations

import math
import re
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .data import BASE, REFERENCE_ROWS, TEACHER, Key, Run, records_by_key, tasks
from .tables import human_count, student_label

# Fixed colours for the methods kdbench ships, so a method looks the same in every report.
REFERENCE_COLORS = {TEACHER: "#222222", BASE: "#a6a6a6"}
# Methods take colours in registration order (kdbench.plugins), so a method keeps its colour in every
# run and plot whatever subset of methods ran.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#ff9896", "#e377c2", "#c49c94", "#9467bd", "#8c564b",
           "#17becf", "#bcbd22", "#393b79", "#637939", "#e7ba52", "#843c39", "#7b4173", "#3182bd", "#31a354",
           "#756bb1", "#636363", "#fd8d3c", "#6baed6", "#74c476", "#9e9ac8", "#ad494a"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "d", "H", "8"]
LINESTYLES = ["-", "--", ":", "-."]

STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "axes.axisbelow": True,
    "svg.hashsalt": "kdbench", "svg.fonttype": "none",  # deterministic ids; text stays editable
    "figure.dpi": 100,
}
DPI = 120


@dataclass
class Figure:
    kind: str  # bars | exposure | reliability | validity_coverage | family | modes | training | scaling
    stem: str  # file name without extension, under plots/
    title: str
    caption: str
    png: Path
    svg: Path


@dataclass
class Styles:
    colors: dict[str, str]
    markers: dict[str, str]
    linestyles: dict[str | None, str]

    def label(self, key: Key, several_students: bool) -> str:
        s, m = key
        return f"{m} [{s}]" if several_students and s is not None else m


def styles_for(run: Run) -> Styles:
    # The reference rows always have a style: plots draw the teacher line even where its row is missing.
    from ..method import METHODS

    registered = {m: i for i, m in enumerate(METHODS.in_registration_order())}
    colors, markers = dict(REFERENCE_COLORS), {TEACHER: "*", BASE: "x"}
    n_reg = len(registered)
    for i, m in enumerate(run.methods):
        # registered methods by registration index; unregistered names (plugins gone) after them
        colors[m] = colors.get(m) or PALETTE[registered.get(m, n_reg + i) % len(PALETTE)]
        markers[m] = "*" if m == TEACHER else ("x" if m == BASE else MARKERS[i % len(MARKERS)])
    ls = {s: LINESTYLES[i % len(LINESTYLES)] for i, s in enumerate(run.students)}
    ls[None] = "-"
    return Styles(colors, markers, ls)


def _new_figure(w: float, h: float):
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(w, h))


def _save(fig, out: Path, stem: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    png, svg = out / f"{stem}.png", out / f"{stem}.svg"
    fig.savefig(png, dpi=DPI, metadata={"Software": None})
    fig.savefig(svg, metadata={"Date": None, "Creator": None})
    return png, svg


def _finish(fig, title: str | None = None, handles: list | None = None, labels: list | None = None,
            ncol: int = 8) -> None:
    """Suptitle on top, a figure legend at the bottom, panels in between (margins in inches)."""
    h = fig.get_figheight()
    bottom = 0.0
    if handles:
        ncol = max(1, min(ncol, len(handles)))
        fig.legend(handles, labels if labels is not None else [x.get_label() for x in handles], loc="lower center",
                   ncol=ncol, frameon=False, bbox_to_anchor=(0.5, 0.02 / h))
        bottom = (0.1 + 0.21 * math.ceil(len(handles) / ncol)) / h
    if title:  # tight_layout makes room for a suptitle itself
        fig.suptitle(title, fontsize=10, y=1 - 0.06 / h, va="top")
    fig.tight_layout(rect=(0, bottom, 1, 1))


def _axes_legend_entries(axes) -> tuple[list, list]:
    """Unique (handle, label) pairs over all panels, in first-seen order."""
    handles, labels = [], []
    for ax in getattr(axes, "flat", axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    return handles, labels


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    ncol = max(1, min(max_cols, n))
    return math.ceil(n / ncol), ncol


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


# ------------------------------------------------------------------------------------------------
# per-task metric bars


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


def _method_handles(st: Styles, methods: list[str], failed: bool = False) -> list:
    """Legend entries: a patch per method (the teacher as its dashed line), and the failed marker."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    for m in methods:
        if m == TEACHER:
            handles.append(Line2D([], [], color=st.colors[m], linestyle="--", label="teacher"))
        else:
            handles.append(Patch(facecolor=st.colors[m], edgecolor="black", linewidth=0.4, label=m))
    if failed:
        handles.append(Line2D([], [], color="#c00000", marker="x", mew=2, linestyle="none", label="failed"))
    return handles


# ------------------------------------------------------------------------------------------------
# exposure bias


def _curve(art) -> tuple[list[float], list[float], list[float]] | None:
    if not isinstance(art, dict):
        return None
    xs = art.get("lengths")
    ys = art.get("exaccerr", art.get("ExAccErr"))
    if not xs or not ys or len(xs) != len(ys):
        return None
    se = art.get("stderr") or [0.0] * len(xs)
    return list(xs), [float("nan") if y is None else float(y) for y in ys], \
        [0.0 if e is None else float(e) for e in se]


def plot_exposure(run: Run, st: Styles, out: Path) -> list[Figure]:
    figs = []
    several = len(run.students) > 1
    for task in tasks(run):
        curves = {}
        for key, recs in records_by_key(run, task).items():
            arts = [(r.get("artifacts") or {}).get("exposure_curve") for r in recs]
            # The teacher is the oracle: its curve is 0 by definition ('self'), drawn as the zero line.
            cs = [c for c in (_curve(a) for a in arts if not (isinstance(a, dict) and a.get("self"))) if c]
            cs = [c for c in cs if c[0] == cs[0][0]] if cs else []  # average seeds on the same lengths
            if cs:
                ys = [statistics.fmean(v) for v in zip(*(c[1] for c in cs))]
                se = [statistics.fmean(v) for v in zip(*(c[2] for c in cs))]
                curves[key] = (cs[0][0], ys, se, len(cs))
        if not curves:
            continue
        fig = _new_figure(6.4, 4.2)
        ax = fig.subplots()
        for key in [k for k in run.keys if k in curves]:
            xs, ys, se, _ = curves[key]
            c = st.colors[key[1]]
            ax.plot(xs, ys, color=c, marker=st.markers[key[1]] if len(xs) <= 30 else None, markersize=4,
                    markevery=None, linestyle=st.linestyles[key[0]],
                    label=st.label(key, several), linewidth=1.4)
            ax.fill_between(xs, [y - e for y, e in zip(ys, se)], [y + e for y, e in zip(ys, se)], color=c,
                            alpha=0.12 if len(curves) <= 5 else 0.05, linewidth=0)
        ax.axhline(0, color=st.colors[TEACHER], linewidth=0.8, linestyle="--", label="teacher (oracle, 0)")
        ax.set_xlabel("generation length l (tokens)")
        ax.set_ylabel("ExAccErr(l) (%)")
        ax.set_title(f"{task}: exposure bias, excess accumulated error vs the teacher (lower is better)")
        if len(curves) > 5:  # many models: the legend goes beside the axes, not over the curves
            fig.set_figwidth(8.4)
            ax.legend(frameon=False, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        else:
            ax.legend(frameon=False)
        fig.tight_layout()
        png, svg = _save(fig, out, f"{_slug(task)}_exposure_bias")
        figs.append(Figure("exposure", png.stem, f"{task}: exposure bias",
                           "ExAccErr against generation length, one line per model (mean over seeds; band: "
                           "± standard error).", png, svg))
    return figs


# ------------------------------------------------------------------------------------------------
# calibration


def _pooled_bins(recs: list[dict]) -> list[dict] | None:
    """Reliability bins pooled over seeds: counts add, accuracy/confidence are count-weighted."""
    pooled: dict[tuple, dict] = {}
    for r in recs:
        bins = (r.get("artifacts") or {}).get("reliability")
        if not isinstance(bins, list):
            continue
        for b in bins:
            if not isinstance(b, dict) or "lo" not in b:
                continue
            p = pooled.setdefault((b["lo"], b["hi"]),
                                  {"lo": b["lo"], "hi": b["hi"], "count": 0, "acc": 0.0, "conf": 0.0})
            n = int(b.get("count") or 0)
            if n and b.get("accuracy") is not None:
                p["count"] += n
                p["acc"] += n * float(b["accuracy"])
                p["conf"] += n * float(b.get("confidence") or 0.0)
    if not pooled:
        return None
    return [{"lo": p["lo"], "hi": p["hi"], "count": p["count"],
             "accuracy": p["acc"] / p["count"] if p["count"] else None,
             "confidence": p["conf"] / p["count"] if p["count"] else None} for _, p in sorted(pooled.items())]


def plot_reliability(run: Run, st: Styles, out: Path) -> list[Figure]:
    figs = []
    several = len(run.students) > 1
    for task in tasks(run):
        by_key = {k: b for k, recs in records_by_key(run, task).items() if (b := _pooled_bins(recs))}
        if not by_key:
            continue
        keys = [k for k in run.keys if k in by_key]
        nrow, ncol = _grid(len(keys), 4)
        fig = _new_figure(2.9 * ncol, 3.1 * nrow + 0.4)
        # Shared axes: tick labels only on the outer panels (each label costs layout time, too).
        axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
        for i, (ax, key) in enumerate(zip(axes.flat, keys)):
            full = [b for b in by_key[key] if b["accuracy"] is not None]
            c = st.colors[key[1]]
            ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=0.8)
            lo = [b["lo"] for b in full]
            w = [b["hi"] - b["lo"] for b in full]
            ax.bar(lo, [b["accuracy"] for b in full], w, align="edge", color=c, alpha=0.85, edgecolor="black",
                   linewidth=0.4)
            gap_lo = [min(b["accuracy"], b["confidence"]) for b in full]
            gap = [abs(b["accuracy"] - b["confidence"]) for b in full]
            ax.bar(lo, gap, w, bottom=gap_lo, align="edge", facecolor="none", edgecolor="#c00000", linewidth=1.1)
            e = run.row(key, (task, "ece"))
            ax.set_title(st.label(key, several) + (f"\nECE {e['mean']:.3f}" if e else ""), fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
            if i // ncol == nrow - 1 or i + ncol >= len(keys):
                ax.set_xlabel("confidence")
                ax.xaxis.set_tick_params(labelbottom=True)
            if i % ncol == 0:
                ax.set_ylabel("accuracy")
        for ax in list(axes.flat)[len(keys):]:
            ax.set_visible(False)
        _finish(fig, f"{task}: reliability diagrams (bars: accuracy per confidence bin; red outline: gap to the "
                     "diagonal, perfect calibration)")
        png, svg = _save(fig, out, f"{_slug(task)}_reliability")
        figs.append(Figure("reliability", png.stem, f"{task}: calibration",
                           "Reliability diagram per model, bins pooled over seeds; the diagonal is perfect "
                           "calibration.", png, svg))
    return figs


# ------------------------------------------------------------------------------------------------
# toy world: precision vs recall, per-family validity, mode histogram


def plot_validity_coverage(run: Run, st: Styles, out: Path) -> list[Figure]:
    figs = []
    several = len(run.students) > 1
    for task in tasks(run):
        pts = [(k, run.row(k, (task, "validity")), run.row(k, (task, "mode_coverage"))) for k in run.keys]
        pts = [(k, v, c) for k, v, c in pts if v is not None and c is not None]
        if not pts:
            continue
        fig = _new_figure(6.4, 4.8)
        ax = fig.subplots()
        xs = [c["mean"] for _, _, c in pts]
        ys = [v["mean"] for _, v, _ in pts]
        xr, yr = (max(xs) - min(xs)) or 10.0, (max(ys) - min(ys)) or 10.0
        clusters: list[list] = []  # points that (nearly) coincide share one label
        for key, v, c in pts:
            ax.errorbar(c["mean"], v["mean"], xerr=c["std"], yerr=v["std"], color=st.colors[key[1]],
                        marker=st.markers[key[1]], markersize=9 if key[1] == TEACHER else 7,
                        markeredgecolor="black", markeredgewidth=0.5, capsize=2, elinewidth=0.8,
                        linestyle="none", label=st.label(key, several), clip_on=False)
            for cl in clusters:
                if abs(cl[0] - c["mean"]) < 0.03 * xr and abs(cl[1] - v["mean"]) < 0.03 * yr:
                    cl[2].append(st.label(key, several))
                    break
            else:
                clusters.append([c["mean"], v["mean"], [st.label(key, several)]])
        for x, y, names in clusters:
            text = "\n".join(textwrap.wrap(", ".join(names), 38))
            ax.annotate(text, (x, y), xytext=(7, 5), textcoords="offset points", fontsize=7, va="bottom")
        ax.set_xlabel("mode coverage: % of valid answers hit in k samples (recall)")
        ax.set_ylabel("validity: % valid responses (precision)")
        # Percent axes with room for the labels; points at 0 stay fully visible.
        px, py = max(2.0, 0.1 * xr), max(2.0, 0.1 * yr)
        ax.set_xlim(max(-px, min(xs) - px), min(103, max(xs) + 3 * px))
        ax.set_ylim(max(-py, min(ys) - py), min(103, max(ys) + 3 * py))
        ax.text(0.02, 0.98, "mode-seeking ↖", transform=ax.transAxes, va="top", fontsize=8, color="#555555")
        ax.text(0.98, 0.02, "mode-covering ↘", transform=ax.transAxes, ha="right", fontsize=8, color="#555555")
        ax.set_title(f"{task}: precision vs recall per method (mean ± std over seeds)")
        ax.legend(frameon=False, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        png, svg = _save(fig, out, f"{_slug(task)}_validity_vs_coverage")
        figs.append(Figure("validity_coverage", png.stem, f"{task}: validity vs mode coverage",
                           "One point per method: up = more valid answers (precision), right = more of the "
                           "valid answers produced (recall).", png, svg))
    return figs


def _mean_dicts(dicts: list[dict]) -> dict[str, float]:
    keys = sorted({k for d in dicts for k in d})
    return {k: statistics.fmean(float(d.get(k, 0.0)) for d in dicts) for k in keys}


def plot_family_validity(run: Run, st: Styles, out: Path) -> list[Figure]:
    figs = []
    several = len(run.students) > 1
    for task in tasks(run):
        data = {}
        for key, recs in records_by_key(run, task).items():
            ds = [d for r in recs if isinstance(d := (r.get("artifacts") or {}).get("validity_by_family"), dict) and d]
            if ds:
                data[key] = _mean_dicts(ds)
        if not data:
            continue
        keys = [k for k in run.keys if k in data]
        fams = sorted({f for d in data.values() for f in d})
        fig = _new_figure(max(4.5, 0.75 * len(fams) + 2.6), 0.38 * len(keys) + 1.8)
        ax = fig.subplots()
        grid = [[data[k].get(f, float("nan")) for f in fams] for k in keys]
        im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                            color="black" if 25 < v < 85 else "white")
        ax.set_xticks(range(len(fams)))
        ax.set_xticklabels(fams, rotation=35, ha="right")
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels([st.label(k, several) for k in keys])
        ax.grid(False)
        fig.colorbar(im, ax=ax, label="% valid", fraction=0.05)
        ax.set_title(f"{task}: validity per family (% valid, mean over seeds)")
        fig.tight_layout()
        png, svg = _save(fig, out, f"{_slug(task)}_validity_by_family")
        figs.append(Figure("family", png.stem, f"{task}: validity per family",
                           "Share of valid responses per prompt family and model.", png, svg))
    return figs


def plot_modes(run: Run, st: Styles, out: Path) -> list[Figure]:
    figs = []
    several = len(run.students) > 1
    for task in tasks(run):
        data = {}
        for key, recs in records_by_key(run, task).items():
            ds = [d for r in recs if isinstance(d := (r.get("artifacts") or {}).get("mode_histogram"), dict) and d]
            if ds:
                data[key] = _mean_dicts(ds)
        if not data:
            continue
        keys = [k for k in run.keys if k in data]
        names = sorted({n for d in data.values() for n in d if n != "invalid"},
                       key=lambda n: (int(n[4:]) if n[4:].isdigit() else 10**6, n))
        names += ["invalid"] if any("invalid" in d for d in data.values()) else []
        from matplotlib import colormaps

        blues = colormaps["Blues"]
        # A mode's colour depends on its rank only (mode 0 darkest), so runs compare at a glance.
        colors = {n: blues(max(0.25, 0.92 - 0.14 * int(n[4:]))) if n[4:].isdigit() else "#7f7f7f"
                  for n in names if n != "invalid"}
        colors["invalid"] = "#d62728"
        fig = _new_figure(7.0, 0.38 * len(keys) + 1.9)
        ax = fig.subplots()
        for i, key in enumerate(keys):
            left = 0.0
            for n in names:
                v = 100 * data[key].get(n, 0.0)
                ax.barh(i, v, left=left, color=colors[n], edgecolor="white", linewidth=0.5,
                        label=(n.replace("mode", "mode ") if n != "invalid" else "invalid") if i == 0 else None)
                left += v
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels([st.label(k, several) for k in keys])
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of samples on multi-answer prompts (mode 0 = the most likely valid answer)")
        ax.grid(axis="y", visible=False)
        _finish(fig, f"{task}: where the samples land among the valid answers (mean over seeds)",
                *ax.get_legend_handles_labels(), ncol=6)
        png, svg = _save(fig, out, f"{_slug(task)}_mode_histogram")
        figs.append(Figure("modes", png.stem, f"{task}: mode histogram",
                           "Share of samples per valid answer (ranked by probability) and invalid ones: "
                           "mode-seeking students concentrate on mode 0.", png, svg))
    return figs


# ------------------------------------------------------------------------------------------------
# training curves


# The loss plus every divergence a method logs against the teacher (forward/reverse/skew KL, JS,
# generalised JSD, TVD, MiniLLM's single-step reverse KL); other diagnostics stay in history.json.
DIVERGENCE_TERM = re.compile(r"kl|jsd|^js$|tvd|single_step|div", re.I)
MAX_PANELS = 9


def _terms(histories: dict[Key, list[dict]]) -> list[str]:
    seen: dict[str, None] = {}
    for h in histories.values():
        for rec in h:
            for k, v in rec.items():
                numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
                if numeric and (k == "loss" or DIVERGENCE_TERM.search(k)):
                    seen.setdefault(k, None)
    return sorted(seen, key=lambda k: (k != "loss", k))[:MAX_PANELS]


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
        ax.set_title(term + (" (the method's objective)" if term == "loss" else ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training step")
        ax.set_ylabel(term)
    for ax in list(axes.flat)[len(terms):]:
        ax.set_visible(False)
    _finish(fig, "Training curves: each method's logged terms against optimisation steps",
            *_axes_legend_entries(axes), ncol=6)
    png, svg = _save(fig, out, "training_curves")
    return [Figure("training", png.stem, "Training curves",
                   "Loss and the divergence terms each method logs (history.json), against optimisation "
                   "steps; a panel shows only the methods that log its term.", png, svg)]


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
                            label=m, linestyle=":" if m in REFERENCE_ROWS else "-")
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


PLOTTERS: list[Callable[[Run, Styles, Path], list[Figure]]] = [
    plot_bars, plot_validity_coverage, plot_modes, plot_family_validity, plot_exposure, plot_reliability,
    plot_training, plot_scaling,
]


def make_plots(run: Run, out: Path) -> tuple[list[Figure], list[str]]:
    """Every plot whose data exists; returns (figures, skipped plotter names with the reason)."""
    import matplotlib  # Figure objects render without pyplot, so no backend is chosen or changed

    st = styles_for(run)
    figs: list[Figure] = []
    problems: list[str] = []
    with matplotlib.rc_context(STYLE):
        for fn in PLOTTERS:
            try:
                figs += fn(run, st, out)
            except Exception as e:  # noqa: BLE001 - one broken artifact must not lose the whole report
                problems.append(f"{fn.__name__}: {type(e).__name__}: {e}")
    return figs, problems
