"""Plots of model behaviour: exposure bias against length, reliability diagrams (calibration)."""
from __future__ import annotations

import statistics
from pathlib import Path

from .data import TEACHER, Run, records_by_key, tasks
from .figure import Figure, Styles, _finish, _grid, _new_figure, _save, _slug


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
