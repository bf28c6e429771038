"""Leaderboards, plots and the HTML report, built from whatever cells exist in a run folder.

`summarize(out_dir)` reads every eval cell's metrics.json and every cell's error.json (data.py),
so a partial, resumed or merged benchmark still reports and failed cells show as failed, never as
zeros; it writes the tables (tables.py), the plots (plots.py) and report.html (html.py). Every
output is a pure function of the cells: summarizing twice gives identical files.

Outputs in the run folder:
    leaderboard.md / .csv / .json / .tex   mean and 95% CI per (student, method, task, metric)
    exports/lm_eval/<model>.json           the leaderboard in lm-evaluation-harness's results shape (exports.py)
    exports/per_example.csv                the per-example scores every CI and comparison resamples
    <model folder>/README.md               a Hugging Face model card per saved student (cards.py)
    leaderboard_delta.md                   each cell minus the baseline method's (default: sft), with CIs
    comparisons.json                       every paired comparison: delta, CI, p, adjusted p, significant
    findings.md / findings.json            each registered claim (the paper's and the user's) with its verdict
    cost.md / cost.csv                     wall time, tokens trained/forwarded/generated, judge calls
    plots/*.png, plots/*.svg               one file per plot kind and task
    report.html                            all of the above in one self-contained page
    failures.json                          the failed cells (only when some failed)
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ConfigError
from ..io import atomic_write_text
from .data import Run, aggregate, collect, load_run  # noqa: F401 - public helpers
from .cost import cost_csv, cost_markdown, cost_rows
from .provenance import sources_markdown
from .tables import check_tex_shape, default_baseline, delta_markdown, latex, leaderboard_csv, markdown, to_json

log = logging.getLogger("kdbench")

__all__ = ["summarize", "load_run", "collect", "aggregate", "Run", "check_tex_shape"]

# Files this module owns; stale ones (e.g. a delta table when the baseline is gone) are removed.
_OPTIONAL = ("leaderboard_delta.md", "failures.json", "findings.md", "findings.json", "tuning.md")


def summarize(out_dir: Path | str, quiet: bool = False, baseline: str | None = None) -> list[dict]:
    """Build every table, plot and report.html from the cells in `out_dir`; return the rows."""
    from .html import render
    from .plots import make_plots

    out = Path(out_dir)
    run = load_run(out)
    if baseline is not None and baseline not in run.methods:
        present = ", ".join(m for m in run.methods if m != "teacher") or "none"
        raise ConfigError(f"--baseline '{baseline}': no rows of that method in {out}; methods present: {present}")
    baseline = baseline or default_baseline(run)
    from .verdicts import compute

    run.verdicts = compute(run, baseline)  # CIs on every row, comparisons, bold sets, findings

    written: dict[str, str] = {
        "leaderboard.md": markdown(run) + sources_markdown(run),
        "leaderboard.csv": leaderboard_csv(run),
        "leaderboard.json": to_json(run.rows),
        "leaderboard.tex": latex(run),
    }
    if baseline:
        written["leaderboard_delta.md"] = delta_markdown(run, baseline)
    written["comparisons.json"] = to_json(run.verdicts.comparisons)
    from .tuning import tuning_markdown

    if tuning_markdown(run):
        written["tuning.md"] = tuning_markdown(run)
    if run.verdicts.findings:
        from ..claims import findings_markdown

        from .verdicts import health_markdown

        written["findings.md"] = findings_markdown(run.verdicts.findings) + health_markdown(run.verdicts.health)
        written["findings.json"] = to_json({"claims": run.verdicts.findings, "metric_health": run.verdicts.health})
    cost = cost_rows(run)
    written["cost.md"] = cost_markdown(run, cost)
    written["cost.csv"] = cost_csv(cost)
    if run.failures:
        written["failures.json"] = to_json(run.failures)
    for name, text in written.items():
        atomic_write_text(out / name, text)
    for name in _OPTIONAL:
        if name not in written:
            (out / name).unlink(missing_ok=True)

    from ..layout import RunLayout
    from .cards import write_cards
    from .exports import write_exports

    write_exports(run, RunLayout(out).exports, run.verdicts.columns)
    cards = write_cards(run)

    plot_dir = out / "plots"
    for old in sorted(plot_dir.glob("*.png")) + sorted(plot_dir.glob("*.svg")):
        old.unlink()  # a rebuild shows only what the current cells support
    figs, problems = make_plots(run, plot_dir) if run.rows or run.train else ([], [])
    for p in problems:
        log.warning("plot skipped: %s", p)
    atomic_write_text(out / "report.html", render(run, figs, problems, baseline, cost))

    if not quiet:
        print(written["leaderboard.md"])
        print(f"leaderboard: {out / 'leaderboard.md'} (.csv, .json, .tex)")
        if baseline:
            print(f"delta to {baseline}: {out / 'leaderboard_delta.md'}")
        print(f"cost: {out / 'cost.md'}")
        if "tuning.md" in written:
            print(f"tuning: {out / 'tuning.md'}")
        print(f"comparisons: {out / 'comparisons.json'} ({len(run.verdicts.comparisons)}, "
              f"{sum(bool(c['significant']) for c in run.verdicts.comparisons)} significant)")
        if run.verdicts.findings:
            counts: dict[str, int] = {}
            for f in run.verdicts.findings:
                counts[f["verdict"]] = counts.get(f["verdict"], 0) + 1
            print(f"findings: {out / 'findings.md'} (" + ", ".join(f"{n} {k}" for k, n in counts.items()) + ")")
        print(f"plots: {len(figs)} in {plot_dir} ({', '.join(f.stem for f in figs)})")
        print(f"exports: {RunLayout(out).exports} (lm_eval/*.json, per_example.csv)")
        if cards:
            print(f"model cards: {len(cards)} (README.md in each student's model folder)")
        print(f"report: {out / 'report.html'}")
    return run.rows
