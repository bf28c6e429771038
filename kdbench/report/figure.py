"""What every plot shares: one colour and marker per method in every report, the style, and the one
save helper (PNG for the report, SVG for papers, byte-identical on a rebuild).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .data import BASE, TEACHER, Key, Run


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
    names: dict[str, str] = field(default_factory=dict)  # method -> shown name (Run.labels)

    def label(self, key: Key, several_students: bool) -> str:
        s, m = key
        m = self.names.get(m, m)
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
    return Styles(colors, markers, ls, dict(run.labels))


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


def _method_handles(st: Styles, methods: list[str], failed: bool = False) -> list:
    """Legend entries: a patch per method (the teacher as its dashed line), and the failed marker."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    for m in methods:
        if m == TEACHER:
            handles.append(Line2D([], [], color=st.colors[m], linestyle="--", label="teacher"))
        else:
            handles.append(Patch(facecolor=st.colors[m], edgecolor="black", linewidth=0.4, label=st.names.get(m, m)))
    if failed:
        handles.append(Line2D([], [], color="#c00000", marker="x", mew=2, linestyle="none", label="failed"))
    return handles


# ------------------------------------------------------------------------------------------------
# exposure bias
