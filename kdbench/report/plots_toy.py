"""Toy-world plots: precision vs recall, the mode histogram of multi-answer prompts, validity per family."""
from __future__ import annotations

import math
import statistics
import textwrap
from pathlib import Path

from .data import TEACHER, Run, records_by_key, tasks
from .figure import Figure, Styles, _finish, _new_figure, _save, _slug


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
