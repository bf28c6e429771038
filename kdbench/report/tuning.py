"""The tuning table (--tune): every method's dev score at every grid point, the selected point, and
what the tuning cost. Read from cells/train/<student>/<method>/tuning.json (kdbench.tuning)."""
from __future__ import annotations

from ..layout import RunLayout
from .data import Run


def tuning_records(run: Run) -> list[dict]:
    return RunLayout(run.out).tuning_records()


def tuning_markdown(run: Run) -> str:
    recs = tuning_records(run)
    if not recs:
        return ""
    labels = list(dict.fromkeys(g["label"] for r in recs for g in r["grid"]))
    metric = recs[0]["metric"]
    head = "| student | method | " + " | ".join(labels) + " | selected | tuning wall time (s) |"
    lines = [head, "|---|---|" + "---:|" * (len(labels) + 2)]
    for r in recs:
        by = {g["label"]: g for g in r["grid"]}
        cells = []
        for lab in labels:
            g = by.get(lab)
            v = "–" if g is None or g["dev_mean"] is None else f"{g['dev_mean']:.2f}"
            cells.append(f"**{v}**" if lab == r["selected"] else v)
        lines.append(f"| {r['student']} | {r['method']} | " + " | ".join(cells) + f" | {r['selected']} | "
                     f"{r['wall_time_s']:.1f} |")
    note = (f"Dev-split {metric} ({'higher' if recs[0]['higher_is_better'] else 'lower'} is better; mean over "
            "training seeds) of every method at every point of the same grid; bold: the selected point, whose "
            "model is the method's leaderboard row (its test score). Wall time: training and dev scoring of "
            "every grid point.")
    return "\n".join(lines) + "\n\n" + note + "\n"
