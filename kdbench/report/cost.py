"""The cost table: what each method's student cost to train and to evaluate (Markdown and CSV)."""
from __future__ import annotations

import csv
import io

from .data import REFERENCE_ROWS, TEACHER, Key, Run
from .tables import DASH, _md_escape, student_label



COST_FIELDS = [("train_wall_time_s", "train wall time (s)"), ("student_tokens", "student tokens"),
               ("teacher_forward_tokens", "teacher forward tokens"), ("generated_tokens", "generated tokens"),
               ("eval_wall_time_s", "eval wall time (s)"), ("judge_calls", "judge calls")]


def cost_rows(run: Run) -> list[dict]:
    """Per (student, method): training cost from its train cell, evaluation cost from its eval cells."""
    from .data import judge_info

    ev: dict[Key, dict] = {}
    for r in run.records:
        key = (None, TEACHER) if r["model"] == TEACHER else (r["group"], r["model"])
        e = ev.setdefault(key, {"eval_wall_time_s": 0.0, "judge_calls": 0})
        e["eval_wall_time_s"] += float(r.get("wall_time_s") or 0.0)
        e["judge_calls"] += judge_info(r.get("artifacts"))[1]
    rows = []
    for key in run.keys:
        cell = run.train.get(key, {})
        res = cell.get("result")
        status = "ok"
        if key[1] not in REFERENCE_ROWS and res is None:
            status = "failed" if run.failed(key) else "missing"
        counters = (res or {}).get("counters") or {}
        wall = (res or {}).get("train_wall_time_s")  # a cached stage (sft): the time it took to build
        if wall is None:
            wall = (res or {}).get("wall_time_s")
        e = ev.get(key, {})
        rows.append({
            "student": key[0], "method": key[1], "status": "shared stage" if key[1] in REFERENCE_ROWS else status,
            "train_wall_time_s": round(float(wall), 2) if wall is not None else None,
            "student_tokens": counters.get("student_tokens"),
            "teacher_forward_tokens": counters.get("teacher_forward_tokens"),
            "generated_tokens": counters.get("generated_tokens"),
            "eval_wall_time_s": round(e["eval_wall_time_s"], 2) if e else None,
            "judge_calls": e.get("judge_calls") if e else None,
        })
    return rows


def _fmt_cost(field: str, v) -> str:
    if v is None:
        return DASH
    if field.endswith("_s"):
        return f"{v:,.1f}"
    return f"{int(v):,}"


def cost_markdown(run: Run, rows: list[dict]) -> str:
    head = "| student | method | " + " | ".join(t for _, t in COST_FIELDS) + " |"
    lines = [head, "|---|---|" + "---:|" * len(COST_FIELDS)]
    train_fields = {"train_wall_time_s", "student_tokens", "teacher_forward_tokens", "generated_tokens"}
    for r in rows:
        failed = r["status"] == "failed"
        cells = ["failed" if failed and f in train_fields else _fmt_cost(f, r[f]) for f, _ in COST_FIELDS]
        lines.append(f"| {_md_escape(student_label(run, r['student']))} | {_md_escape(r['method'])} | "
                     + " | ".join(cells) + " |")
    note = ("Training cost from each method's train cell (counters in result.json; `sft` is a cached stage "
            "shared with methods that start from it, shown with the time it took to build). Teacher and "
            "student-base rows are shared stages: only their evaluation cost is shown. Eval wall time and judge "
            "calls are summed over all tasks and seeds.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def cost_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    fields = ["student", "method", "status"] + [f for f, _ in COST_FIELDS]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in fields})
    return buf.getvalue()


