"""The cost table: what each method's student cost to train and to evaluate (Markdown and CSV)."""
from __future__ import annotations

import csv
import io

from .data import REFERENCE_ROWS, TEACHER, Key, Run
from .tables import DASH, _md_escape, student_label



COST_FIELDS = [("budget", "budget (steps x batch)"), ("trainable_params", "trainable params"),
               ("params", "params"), ("train_runs", "training runs"),
               ("train_wall_time_s", "train wall time per run (s)"), ("with_init_s", "incl. SFT init (s)"),
               ("selected_step", "selected step"), ("student_tokens", "student tokens"),
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
        results = [c["result"] for c in cell.get("runs", [cell]) if c.get("result")]
        counters = _mean_counters([r.get("counters") or {} for r in results])
        wall = _mean([_wall(r) for r in results])
        budget = (res or {}).get("budget") or {}
        init = None
        if budget.get("init") == "sft":  # it starts from the SFT student: that cost is part of its own
            init = _mean([_wall(c["result"]) for c in run.train.get((key[0], "sft"), {}).get("runs", [])
                          if c.get("result")])
        sel = [r.get("selected_step") for r in results if r.get("selected_step") is not None]
        params = next((r["params"] for r in results if r.get("params")), {})
        e = ev.get(key, {})
        rows.append({
            "student": key[0], "method": key[1], "status": "shared stage" if key[1] in REFERENCE_ROWS else status,
            "budget": (f"{budget['steps']} x {budget['batch_size']}" + (" + sft" if budget.get("init") == "sft" else "")
                       if budget else None),
            "trainable_params": params.get("trainable"), "params": params.get("total"),
            "train_runs": len(results) or None,
            "train_wall_time_s": round(float(wall), 2) if wall is not None else None,
            "with_init_s": round(wall + init, 2) if wall is not None and init is not None else None,
            "selected_step": "/".join(map(str, sel)) if sel else None,
            "student_tokens": counters.get("student_tokens"),
            "teacher_forward_tokens": counters.get("teacher_forward_tokens"),
            "generated_tokens": counters.get("generated_tokens"),
            "eval_wall_time_s": round(e["eval_wall_time_s"], 2) if e else None,
            "judge_calls": e.get("judge_calls") if e else None,
        })
    return rows


def _wall(res: dict):
    wall = res.get("train_wall_time_s")  # a cached stage (sft): the time it took to build
    return res.get("wall_time_s") if wall is None else wall


def _mean(xs):
    xs = [float(x) for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _mean_counters(cs: list[dict]) -> dict:
    keys = {k for c in cs for k in c}
    return {k: int(round(_mean([c.get(k) for c in cs]))) for k in keys if _mean([c.get(k) for c in cs]) is not None}


def _fmt_cost(field: str, v) -> str:
    if v is None:
        return DASH
    if isinstance(v, str):
        return v
    if field.endswith("_s"):
        return f"{v:,.1f}"
    return f"{int(v):,}"


def cost_markdown(run: Run, rows: list[dict]) -> str:
    head = "| student | method | " + " | ".join(t for _, t in COST_FIELDS) + " |"
    lines = [head, "|---|---|" + "---:|" * len(COST_FIELDS)]
    train_fields = {"train_wall_time_s", "with_init_s", "student_tokens", "teacher_forward_tokens", "generated_tokens"}
    for r in rows:
        failed = r["status"] == "failed"
        cells = ["failed" if failed and f in train_fields else _fmt_cost(f, r[f]) for f, _ in COST_FIELDS]
        lines.append(f"| {_md_escape(student_label(run, r['student']))} | {_md_escape(run.label(r['method']))} | "
                     + " | ".join(cells) + " |")
    note = ("Training cost per training run (mean over training seeds) from each method's train cells (counters "
            "in result.json; `sft` is a cached stage shared with methods that start from it, shown with the time "
            "it took to build). Budget: optimizer steps x sequences per step; `+ sft`: the method starts from the "
            "SFT student, whose time is included in `incl. SFT init`. Trainable params: what the optimizer updated "
            "(a LoRA student, `--peft lora`: its adapter only) out of all the student's parameters. Selected step: the dev-selected checkpoint "
            "per training run (select.every). Teacher and "
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


