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
    <task>_forest                each method minus the baseline with its paired 95% CI, per metric
    ranks                        mean rank across tasks and metrics with bootstrap rank intervals (>= 3 methods)

Every method has one colour and marker in every plot of every report (by registration order,
report/figure.py), so figures can be compared side by side. Figures are
built on `matplotlib.figure.Figure` (no pyplot global state) and written byte-identically on a
rebuild (no dates in SVG, a fixed SVG id salt).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .data import Run
from .figure import STYLE, Figure, Styles, styles_for  # noqa: F401 - Figure/styles_for are this module's API
from .plots_behaviour import plot_exposure, plot_reliability
from .plots_metrics import plot_bars, plot_scaling, plot_training
from .plots_toy import plot_family_validity, plot_modes, plot_validity_coverage
from .plots_verdicts import plot_forest, plot_ranks

PLOTTERS: list[Callable[[Run, Styles, Path], list[Figure]]] = [
    plot_bars, plot_validity_coverage, plot_modes, plot_family_validity, plot_exposure, plot_reliability,
    plot_training, plot_scaling, plot_forest, plot_ranks,
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
