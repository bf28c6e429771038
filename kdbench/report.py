"""Leaderboards and plots, built from whatever cells exist in a run folder.

`summarize(out_dir)` reads every eval cell's metrics.json (and every train cell's error.json), so
a partial, resumed or merged benchmark still reports, and failed cells show as failed, not zeros.
Numbers are mean ± std over seeds (sample std, ddof=1; 0 with one seed) with the seed count.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

from .io import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger("kdbench")

REFERENCE_ROWS = ("teacher", "student-base")


def _method_order(out: Path) -> list[str]:
    cfg_path = out / "config.json"
    if cfg_path.exists():
        return list(read_json(cfg_path).get("methods", []))
    return []


def collect(out: Path) -> tuple[list[dict], list[dict]]:
    """(per-seed records, failures) from the cells under `out`."""
    records, failures = [], []
    for p in sorted((out / "cells" / "eval").glob("*/*/*/seed*/metrics.json")):
        if not (p.parent / "DONE").exists():
            continue
        m = read_json(p)
        records.append(m)
    for p in sorted((out / "cells").glob("**/error.json")):
        e = read_json(p)
        e.pop("traceback", None)
        e["path"] = str(p.parent.relative_to(out))
        failures.append(e)
    return records, failures


def _metric_meta(name: str) -> tuple[int | None, bool]:
    from .metrics.base import METRICS
    from .plugins import load_plugins

    load_plugins()
    for metric_name in METRICS.names():
        metric = METRICS.get(metric_name)
        if metric_name == name:
            return metric.version, metric.higher_is_better
        if name in metric.sub_directions:
            return metric.version, metric.direction(name)
    return None, True


def aggregate(records: list[dict]) -> list[dict]:
    groups: dict[tuple, list[float]] = {}
    n_examples: dict[tuple, int] = {}
    task_versions: dict[str, int] = {}
    for r in records:
        student = None if r["group"] == "_teacher" else r["group"]
        for metric, value in r["metrics"].items():
            k = (student, r["model"], r["task"], metric)
            groups.setdefault(k, []).append(float(value))
            n_examples[k] = r.get("n_examples")
        task_versions[r["task"]] = r.get("task_version")
    rows = []
    for (student, model, task, metric), vals in groups.items():
        version, hib = _metric_meta(metric)
        rows.append({"student": student, "method": model, "task": task, "metric": metric,
                     "mean": round(statistics.fmean(vals), 4),
                     "std": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0,
                     "n_seeds": len(vals), "n_examples": n_examples[(student, model, task, metric)],
                     "higher_is_better": hib, "metric_version": version, "task_version": task_versions.get(task)})
    return rows


def _row_order(rows: list[dict], method_order: list[str]) -> list[tuple]:
    keys = []
    for r in rows:
        k = (r["student"], r["method"])
        if k not in keys:
            keys.append(k)

    def rank(k):
        student, method = k
        if method == "teacher":
            return (0, "", 0)
        mi = method_order.index(method) if method in method_order else len(method_order)
        return (1, student or "", -1 if method == "student-base" else mi, method)

    return sorted(keys, key=rank)


def _columns(rows: list[dict]) -> list[tuple[str, str]]:
    cols = []
    for r in rows:
        c = (r["task"], r["metric"])
        if c not in cols:
            cols.append(c)
    return cols


def markdown(rows: list[dict], failures: list[dict], method_order: list[str]) -> str:
    if not rows and not failures:
        return "_no finished cells yet_\n"
    cols = _columns(rows)
    idx = {(r["student"], r["method"], r["task"], r["metric"]): r for r in rows}
    keys = _row_order(rows, method_order)
    failed = {(f.get("student"), f.get("name")) for f in failures if f.get("kind") in ("train", "stage")}
    n_seeds = sorted({r["n_seeds"] for r in rows})
    # Best distilled student per column (bold): excludes the teacher and the untrained base.
    best: dict[tuple, float] = {}
    for (student, method) in keys:
        if method in REFERENCE_ROWS:
            continue
        for c in cols:
            r = idx.get((student, method, *c))
            if r is None:
                continue
            v = r["mean"] if r["higher_is_better"] else -r["mean"]
            best[(student, *c)] = max(best.get((student, *c), -math.inf), v)
    arrow = {c: ("↑" if next(r for r in rows if (r["task"], r["metric"]) == c)["higher_is_better"] else "↓") for c in cols}
    head = "| student | method | " + " | ".join(f"{t} {m} {arrow[(t, m)]}" for t, m in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for student, method in keys:
        cells = []
        for c in cols:
            r = idx.get((student, method, *c))
            if r is None:
                cells.append("failed" if (student, method) in failed else "–")
                continue
            s = f"{r['mean']:.2f} ± {r['std']:.2f}"
            v = r["mean"] if r["higher_is_better"] else -r["mean"]
            if method not in REFERENCE_ROWS and math.isclose(v, best.get((student, *c), math.nan)):
                s = f"**{s}**"
            cells.append(s)
        lines.append(f"| {student or '—'} | {method} | " + " | ".join(cells) + " |")
    for student, method in sorted(failed - set(keys), key=str):
        lines.append(f"| {student or '—'} | {method} | " + " | ".join("failed" for _ in cols) + " |")
    note = f"\nMean ± std over {', '.join(map(str, n_seeds))} evaluation seeds; bold = best distilled student per column."
    if failures:
        note += f"\n\n{len(failures)} cell(s) failed: " + "; ".join(
            f"{f.get('kind')} {f.get('name')}{' [' + str(f.get('student')) + ']' if f.get('student') else ''}: {f.get('error')}"
            for f in failures)
    return "\n".join(lines) + "\n" + note + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    import csv
    import io

    buf = io.StringIO()
    fields = ["student", "method", "task", "metric", "mean", "std", "n_seeds", "n_examples", "higher_is_better",
              "metric_version", "task_version"]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in fields})
    atomic_write_text(path, buf.getvalue())


def plot_bars(rows: list[dict], method_order: list[str], out: Path) -> list[Path]:
    """One PNG per task: a panel per metric, a bar per model with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    keys = _row_order(rows, method_order)
    labels_all = [m if not s or len({k[0] for k in keys if k[0]}) == 1 else f"{m}\n[{s}]" for s, m in keys]
    cmap = plt.get_cmap("tab10")
    colors = {m: cmap(i % 10) for i, m in enumerate(dict.fromkeys(m for _, m in keys))}
    for task in tasks:
        metrics = list(dict.fromkeys(r["metric"] for r in rows if r["task"] == task))
        ncol = min(3, len(metrics))
        nrow = math.ceil(len(metrics) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
        for ax, metric in zip(axes.flat, metrics):
            idx = {(r["student"], r["method"]): r for r in rows if r["task"] == task and r["metric"] == metric}
            xs, means, stds, cols, labels = [], [], [], [], []
            for i, ((s, m), lab) in enumerate(zip(keys, labels_all)):
                r = idx.get((s, m))
                if r is None:
                    continue
                xs.append(len(xs))
                means.append(r["mean"])
                stds.append(r["std"])
                cols.append(colors[m])
                labels.append(lab)
            ax.bar(xs, means, yerr=stds, color=cols, capsize=3, edgecolor="black", linewidth=0.5)
            for x, v in zip(xs, means):
                ax.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
            hib = next(r for r in rows if r["metric"] == metric)["higher_is_better"]
            ax.set_title(f"{metric} ({'higher' if hib else 'lower'} is better)", fontsize=10)
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
        for ax in list(axes.flat)[len(metrics):]:
            ax.axis("off")
        n = next(r["n_seeds"] for r in rows if r["task"] == task)
        fig.suptitle(f"{task}: mean ± std over {n} seeds", fontsize=11)
        fig.tight_layout()
        p = out / "plots" / f"{task}_metrics.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def summarize(out_dir: Path | str, quiet: bool = False) -> list[dict]:
    """Build leaderboard.{md,csv,json} and plots from the cells in `out_dir`; return the rows."""
    out = Path(out_dir)
    records, failures = collect(out)
    rows = aggregate(records)
    order = _method_order(out)
    keys = _row_order(rows, order)
    rank = {k: i for i, k in enumerate(keys)}
    rows.sort(key=lambda r: (rank[(r["student"], r["method"])], r["task"], r["metric"]))
    md = markdown(rows, failures, order)
    atomic_write_text(out / "leaderboard.md", md)
    write_csv(rows, out / "leaderboard.csv")
    atomic_write_json(out / "leaderboard.json", rows)
    if failures:
        atomic_write_json(out / "failures.json", failures)
    plots = plot_bars(rows, order, out) if rows else []
    if not quiet:
        print(md)
        print(f"leaderboard: {out / 'leaderboard.md'} (.csv, .json)")
        for p in plots:
            print(f"plot: {p}")
    return rows
