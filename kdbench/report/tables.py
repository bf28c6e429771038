"""Leaderboard, delta and cost tables as Markdown, CSV, JSON and LaTeX.

Layout (the paper's): rows grouped by student, then method, with the teacher row on top; columns
task x metric; mean and 95% CI (report/verdicts.py); in bold every distilled student of its group
not significantly worse than the best (ties share the bold); a star where a student beats the teacher. A cell with no value shows `failed` when a failure covers
it and a dash otherwise, never a zero.
"""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from .data import REFERENCE_ROWS, TEACHER, Key, Run

STAR = "★"
PARTIAL = "†"
DASH = "–"
CSV_FIELDS = ["student", "method", "task", "metric", "mean", "ci_low", "ci_high", "std", "std_between", "std_within",
              "n_train_seeds", "n_eval_seeds", "n_prompts", "n_seeds", "n_failed_seeds", "n_examples",
              "judge", "higher_is_better", "task_version", "metric_version"]


# ------------------------------------------------------------------------------------------------
# shared cell logic


def human_count(n: int | float | None) -> str:
    if n is None:
        return DASH
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return str(int(n))


def student_label(run: Run, student: str | None) -> str:
    if student is None:
        return DASH
    n = run.params.get(student)
    return f"{student} ({human_count(n)})" if n else student


def decimals(run: Run, col: tuple[str, str]) -> int:
    """3 decimals for columns whose values live below 1 (ECE), 2 otherwise."""
    vals = [abs(r["mean"]) for r in run.rows if (r["task"], r["metric"]) == col]
    return 3 if vals and 0 < max(vals) < 1 else 2


def direction(run: Run, col: tuple[str, str]) -> bool:
    return next((r["higher_is_better"] for r in run.rows if (r["task"], r["metric"]) == col), True)


# Metrics measured against the teacher itself (ExAccErr uses it as the oracle): its value there is 0
# by definition, so "beats the teacher" would mean nothing.
TEACHER_REFERENCE_METRICS = ("exposure_bias",)


def teacher_is_reference(col: tuple[str, str]) -> bool:
    return col[1].split("@")[0] in TEACHER_REFERENCE_METRICS


def _score(r: dict) -> float:
    return r["mean"] if r["higher_is_better"] else -r["mean"]


def best_by_group(run: Run) -> dict[tuple, float]:
    """(student, task, metric) -> the best distilled score (signed so that larger is better)."""
    best: dict[tuple, float] = {}
    for key in run.keys:
        if key[1] in REFERENCE_ROWS:
            continue
        for col in run.columns:
            r = run.row(key, col)
            if r is not None:
                best[(key[0], *col)] = max(best.get((key[0], *col), -math.inf), _score(r))
    return best


def cell_flags(run: Run, key: Key, col: tuple[str, str], best: dict) -> dict[str, Any]:
    """What a leaderboard cell shows: the row, bold, star, partial, or failed/missing."""
    r = run.row(key, col)
    if r is None:
        return {"row": None, "failed": run.failed(key, col)}
    v = getattr(run, "verdicts", None)
    if v is not None and (key[0], *col) in v.bold:  # significance-aware: not significantly worse than the best
        is_best = key[1] in v.bold[(key[0], *col)]
    else:
        is_best = key[1] not in REFERENCE_ROWS and math.isclose(_score(r), best.get((key[0], *col), math.nan),
                                                               rel_tol=1e-9, abs_tol=1e-12)
    t = run.row((None, TEACHER), col)
    beats = key[1] != TEACHER and t is not None and _score(r) > _score(t) and not teacher_is_reference(col)
    return {"row": r, "bold": is_best, "star": beats, "partial": r["n_failed_seeds"] > 0}


def column_title(col: tuple[str, str], hib: bool) -> str:
    return f"{col[0]}/{col[1]} {'↑' if hib else '↓'}"


def value_text(r: dict, d: int) -> str:
    """'mean [ci_low, ci_high]' when the row has a CI, else 'mean ± std' over seeds."""
    if r.get("ci_low") is not None and r.get("ci_high") is not None:
        return f"{r['mean']:.{d}f} [{r['ci_low']:.{d}f}, {r['ci_high']:.{d}f}]"
    return f"{r['mean']:.{d}f} ± {r['std']:.{d}f}"


def ci_note(run: Run) -> str:
    """What the numbers in the cells are, with the counts behind them."""
    if not any(r.get("ci_low") is not None for r in run.rows):
        return f"Mean ± std over {_seed_note(run)} evaluation seeds."
    ts = sorted({r["n_train_seeds"] for r in run.rows if r.get("n_train_seeds")})
    es = sorted({r["n_eval_seeds"] for r in run.rows if r.get("n_eval_seeds")})
    ps = sorted({r["n_prompts"] for r in run.rows if r.get("n_prompts")})
    cell = sorted({f"{r['task']}/{r['metric']}" for r in run.rows if r.get("ci_level") == "cell"})
    s = (f"Mean [95% CI]: hierarchical bootstrap over {'/'.join(map(str, ts))} training seed(s), "
         f"{'/'.join(map(str, ps)) or '–'} prompts and {'/'.join(map(str, es))} evaluation seeds.")
    if ts == [1]:
        s += " One training run per method: training-seed variance is not in these CIs."
    if cell:
        s += f" No per-example breakdown for {', '.join(cell)}: CIs there resample seeds only."
    return s


def _seed_note(run: Run) -> str:
    n = sorted({r["n_seeds"] for r in run.rows})
    return ", ".join(map(str, n)) if n else "0"


def failure_lines(run: Run) -> list[str]:
    """One line per failure, the seeds of one (model, task, error) folded into one line."""
    groups: dict[tuple, list] = {}
    for f in run.failures:
        w = f["where"]
        k = (f.get("kind", "?"), w["method"] or f.get("name"), w["student"], w["task"], f.get("error", "?"))
        groups.setdefault(k, []).append(w["seed"])
    out = []
    for (kind, method, student, task, err), seeds in groups.items():
        who = f"{method}" + (f" [{student}]" if student else "")
        if task:
            ss = sorted({str(x) for x in seeds}, key=lambda x: (len(x), x))
            who += f" on {task} seed{'s' if len(ss) > 1 else ''} {', '.join(ss)}"
        out.append(f"{kind} {who}: {err}")
    return out


# ------------------------------------------------------------------------------------------------
# Markdown


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown(run: Run) -> str:
    if not run.rows and not run.failures:
        return "_no finished cells yet_\n"
    best = best_by_group(run)
    cols = run.columns
    head = "| student | method | " + " | ".join(column_title(c, direction(run, c)) for c in cols) + " |"
    lines = [head, "|---|---|" + "---:|" * len(cols)]
    for key in run.keys:
        cells = []
        for c in cols:
            f = cell_flags(run, key, c, best)
            r = f["row"]
            if r is None:
                cells.append("failed" if f["failed"] else DASH)
                continue
            d = decimals(run, c)
            s = value_text(r, d)
            if f["bold"]:
                s = f"**{s}**"
            s += (STAR if f["star"] else "") + (PARTIAL if f["partial"] else "")
            cells.append(s)
        lines.append(f"| {_md_escape(student_label(run, key[0]))} | {_md_escape(key[1])} | " + " | ".join(cells) + " |")
    bold = ("**Bold**: not significantly worse than the best distilled student of its group (paired bootstrap, "
            "Benjamini-Hochberg over the column's comparisons, alpha 0.05)" if getattr(run, "verdicts", None)
            else "**Bold**: best distilled student of its group")
    notes = [f"{ci_note(run)} {bold} per column; {STAR}: beats the teacher (not marked on ExAccErr, which is 0 for the teacher by "
             f"definition); {PARTIAL}: some seeds failed; failed: no seed finished."]
    judges = sorted({r["judge"] for r in run.rows if r["judge"]})
    if judges:
        notes.append(f"Judge: {', '.join(judges)}.")
    fl = failure_lines(run)
    if fl:
        notes.append(f"{len(run.failures)} cell(s) failed:\n" + "\n".join(f"- {x}" for x in fl))
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


# ------------------------------------------------------------------------------------------------
# delta view


def default_baseline(run: Run) -> str | None:
    """The run's configured baseline (config key `baseline`, default sft) when it has rows."""
    b = run.config.get("baseline") or "sft"
    return b if b in run.methods else None


def delta_cells(run: Run, baseline: str) -> tuple[list[Key], dict[tuple, dict]]:
    """Rows shown in the delta view and, per (key, col): {'delta', 'better', 'base'} or a status."""
    single = len(run.students) == 1
    keys = [k for k in run.keys if k[1] != TEACHER or single]
    out: dict[tuple, dict] = {}
    for key in keys:
        student = run.students[0] if key[1] == TEACHER else key[0]
        for c in run.columns:
            r = run.row(key, c)
            b = run.row((student, baseline), c)
            if r is None:
                out[(key, c)] = {"status": "failed" if run.failed(key, c) else "missing"}
            elif key == (student, baseline):
                out[(key, c)] = {"status": "baseline", "value": r["mean"]}
            elif b is None:
                out[(key, c)] = {"status": "no-baseline"}
            else:
                d = r["mean"] - b["mean"]
                x = {"status": "ok", "delta": d, "better": (d > 0) == r["higher_is_better"] and d != 0,
                     "significant": None}
                v = getattr(run, "verdicts", None)
                cmp = v.comparison(key[0], key[1], baseline, *c) if v is not None else None
                if cmp is not None and cmp["delta"] is not None:  # None: not computable on these scores
                    x.update(delta=cmp["delta"], ci_low=cmp["ci_low"], ci_high=cmp["ci_high"],
                             p_adjusted=cmp["p_adjusted"], significant=bool(cmp["significant"]))
                out[(key, c)] = x
    return keys, out


def delta_markdown(run: Run, baseline: str) -> str:
    keys, cells = delta_cells(run, baseline)
    cols = run.columns
    head = "| student | method | " + " | ".join(column_title(c, direction(run, c)) for c in cols) + " |"
    lines = [head, "|---|---|" + "---:|" * len(cols)]
    for key in keys:
        out = []
        for c in cols:
            x = cells[(key, c)]
            d = decimals(run, c)
            st = x["status"]
            if st == "ok" and x.get("ci_low") is not None:
                t = f"{x['delta']:+.{d}f} [{x['ci_low']:+.{d}f}, {x['ci_high']:+.{d}f}]"
                out.append(f"**{t}**" if x["significant"] else t)
            elif st == "ok":
                out.append(f"{x['delta']:+.{d}f}")
            elif st == "baseline":
                out.append(f"_{x['value']:.{d}f}_")
            else:
                out.append({"failed": "failed", "missing": DASH, "no-baseline": "n/a"}[st])
        lines.append(f"| {_md_escape(student_label(run, key[0]))} | {_md_escape(key[1])} | " + " | ".join(out) + " |")
    note = (f"Difference of the mean to the `{baseline}` student of the same group (its row shows its own values "
            f"in italics) with its paired 95% CI (same prompts and seeds); **bold**: significant after "
            f"Benjamini-Hochberg correction over the comparisons of its column (alpha 0.05), the rest is within "
            f"noise; arrows in the header give the better direction; n/a: the baseline has no value there.")
    if len(run.students) > 1:
        note += " The teacher row is left out when several students ran."
    else:
        note += " The teacher row is compared with the one student group's baseline."
    return "\n".join(lines) + "\n\n" + note + "\n"


# ------------------------------------------------------------------------------------------------
# CSV / JSON


def leaderboard_csv(run: Run) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in run.rows:
        w.writerow({k: r.get(k) for k in CSV_FIELDS})
    return buf.getvalue()


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------------
# LaTeX


_TEX_ESC = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(s: str) -> str:
    return "".join(_TEX_ESC.get(ch, ch) for ch in str(s))


def latex(run: Run) -> str:
    """A booktabs table in the paper's layout; needs \\usepackage{booktabs} (and graphicx if wide)."""
    best = best_by_group(run)
    cols = run.columns
    tasks = list(dict.fromkeys(t for t, _ in cols))
    wide = len(cols) > 6
    out = ["% kdbench leaderboard (generated by `python run_bench.py summarize`).",
           "% Needs \\usepackage{booktabs}" + (" and \\usepackage{graphicx} (\\resizebox)." if wide else "."),
           "\\begin{table}[t]", "\\centering",
           f"\\caption{{Mean$_{{\\pm\\mathrm{{std}}}}$ over {_seed_note(run)} evaluation seeds. "
           "\\textbf{Bold}: best distilled student per group; $^{*}$: beats the teacher.}",
           "\\label{tab:kdbench}"]
    if wide:
        out.append("\\resizebox{\\textwidth}{!}{%")
    out.append("\\begin{tabular}{ll" + "c" * len(cols) + "}")
    out.append("\\toprule")
    spans, rules, pos = [], [], 3
    for t in tasks:
        n = sum(1 for c in cols if c[0] == t)
        spans.append(f"\\multicolumn{{{n}}}{{c}}{{{tex_escape(t)}}}")
        rules.append(f"\\cmidrule(lr){{{pos}-{pos + n - 1}}}")
        pos += n
    if cols:
        out.append(" & & " + " & ".join(spans) + " \\\\")
        out.append(" ".join(rules))
    arrows = {True: "$\\uparrow$", False: "$\\downarrow$"}
    heads = [f"{tex_escape(m)} {arrows[direction(run, (t, m))]}" for t, m in cols]
    out.append(" & ".join(["Student", "Method"] + heads) + " \\\\")
    out.append("\\midrule")
    for i, key in enumerate(run.keys):
        first = i == 0 or run.keys[i - 1][0] != key[0]
        if first and i > 0:  # a rule between student groups (and below the teacher)
            out.append("\\midrule")
        cells = []
        for c in cols:
            f = cell_flags(run, key, c, best)
            r = f["row"]
            if r is None:
                cells.append("\\textit{failed}" if f["failed"] else "--")
                continue
            d = decimals(run, c)
            m = f"{r['mean']:.{d}f}"
            m = f"\\mathbf{{{m}}}" if f["bold"] else m
            marks = ("*" if f["star"] else "") + ("\\dagger" if f["partial"] else "")
            sup = f"^{{{marks}}}" if marks else ""
            cells.append(f"${m}_{{\\pm {r['std']:.{d}f}}}{sup}$")
        if key[1] == TEACHER:
            lead = "\\multicolumn{2}{l}{Teacher}"
        else:
            who = tex_escape(student_label(run, key[0])) if first else ""
            lead = f"{who} & {tex_escape(key[1])}"
        out.append(" & ".join([lead] + cells) + " \\\\")
    out.append("\\bottomrule")
    out.append("\\end{tabular}" + ("}" if wide else ""))
    out.append("\\end{table}")
    return "\n".join(out) + "\n"


def check_tex_shape(tex: str) -> list[str]:
    """Problems a LaTeX compiler would trip on: unbalanced braces/environments, ragged rows."""
    problems = []
    depth = 0
    prev = ""
    for ch in tex:
        if prev != "\\":
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth < 0:
                problems.append("a closing brace without an opening one")
                depth = 0
        prev = ch if prev != "\\" else ""
    if depth:
        problems.append(f"{depth} unclosed brace(s)")
    for env in ("table", "tabular"):
        if tex.count(f"\\begin{{{env}}}") != tex.count(f"\\end{{{env}}}"):
            problems.append(f"unbalanced {env} environment")
    spec = tex.split("\\begin{tabular}{", 1)[1].split("}", 1)[0] if "\\begin{tabular}{" in tex else ""
    ncol = len(spec)
    body = tex.split("\\begin{tabular}", 1)[-1].split("\\end{tabular}", 1)[0]
    for line in body.splitlines():
        line = line.strip()
        if not line.endswith("\\\\"):
            continue
        amps = line.count("&") - line.count("\\&")
        for span in _multicolumns(line):
            amps += span - 1
        if amps != ncol - 1:
            problems.append(f"row has {amps + 1} columns, expected {ncol}: {line[:60]}")
    return problems


def _multicolumns(line: str) -> list[int]:
    out = []
    i = line.find("\\multicolumn{")
    while i >= 0:
        j = line.index("}", i)
        out.append(int(line[i + len("\\multicolumn{"):j]))
        i = line.find("\\multicolumn{", j)
    return out
