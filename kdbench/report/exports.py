"""Exports for other tools: the leaderboard in lm-evaluation-harness's results shape, and the
per-example scores every CI and comparison was computed from.

    exports/lm_eval/<model>.json   one results file per leaderboard model (teacher, <student>__<method>),
                                   shaped like lm-eval's results_*.json: results["<task>"]["<metric>,none"],
                                   "<metric>_stderr,none", versions, n-shot, higher_is_better, n-samples,
                                   configs, config, git_hash; kdbench's CIs under "kdbench"
    exports/per_example.csv        long table: one row per (task, metric, model, training seed,
                                   evaluation seed, example), the exact frames kdbench.stats resamples

lm-eval reports a standard error; kdbench has a 95% hierarchical-bootstrap CI, so the stderr given
is its half-width / 1.96 (the CI itself is kept under "kdbench"). Values keep kdbench's scale
(Rouge-L x100, ...). No date field: summarizing twice gives identical files.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..stats import MeanOf
from .data import Run
from .provenance import git_commit
from .scores import Column, model_key

Z95 = 1.959964  # two-sided 95% normal quantile: CI half-width -> standard error
ID_COLUMNS = ["task", "metric", "level", "statistic", "student", "method", "model", "train_seed", "eval_seed",
              "example_id", "value"]


def lm_eval_name(student: str | None, method: str) -> str:
    """lm-eval's sanitised model name ('/' -> '__'): teacher, gpt2-toy-xs__kd."""
    return model_key(student, method).replace("/", "__")


def _stderr(r: dict):
    lo, hi = r.get("ci_low"), r.get("ci_high")
    return "N/A" if lo is None or hi is None else float(f"{(hi - lo) / (2 * Z95):.6g}")


def lm_eval_results(run: Run) -> dict[str, dict]:
    """File stem -> lm-eval-shaped results of one leaderboard model."""
    c, ev = run.config, run.config.get("eval", {}) or {}
    commit = (git_commit(run) or "").split(" ")[0].rstrip(",") or None
    gen = {"temperature": ev.get("temperature"), "top_p": ev.get("top_p"), "top_k": ev.get("top_k"),
           "max_gen_toks": ev.get("max_new_tokens"), "do_sample": True}
    out: dict[str, dict] = {}
    for student, method in run.keys:
        rows = [r for r in run.rows if (r["student"], r["method"]) == (student, method)]
        if not rows:
            continue
        name = lm_eval_name(student, method)
        doc: dict = {"results": {}, "group_subtasks": {}, "configs": {}, "versions": {}, "n-shot": {},
                     "higher_is_better": {}, "n-samples": {}}
        ci: dict = {}
        for r in rows:
            t, m = r["task"], r["metric"]
            doc["results"].setdefault(t, {"alias": t})
            doc["results"][t][f"{m},none"] = r["mean"]
            doc["results"][t][f"{m}_stderr,none"] = _stderr(r)
            doc["group_subtasks"].setdefault(t, [])
            cfg = doc["configs"].setdefault(t, {"task": t, "output_type": "generate_until", "num_fewshot": 0,
                                                "generation_kwargs": gen, "metric_list": []})
            cfg["metric_list"].append({"metric": m, "aggregation": "mean", "higher_is_better": r["higher_is_better"]})
            doc["versions"][t] = r.get("task_version")
            doc["n-shot"][t] = 0
            doc["higher_is_better"].setdefault(t, {})[m] = r["higher_is_better"]
            doc["n-samples"][t] = {"original": r["n_examples"], "effective": r.get("n_prompts") or r["n_examples"]}
            ci.setdefault(t, {})[m] = {"mean": r["mean"], "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high"),
                                       "n_seeds": r["n_seeds"], "n_train_seeds": r.get("n_train_seeds"),
                                       "n_eval_seeds": r.get("n_eval_seeds"), "n_prompts": r.get("n_prompts")}
        doc["config"] = {"model": "kdbench", "model_args": f"student={student},method={method}",
                         "batch_size": ev.get("batch_size"), "device": c.get("device"),
                         "limit": ev.get("max_examples"), "gen_kwargs": gen}
        doc.update({"git_hash": commit, "model_name": model_key(student, method), "model_name_sanitized": name,
                    "kdbench": {"student": student, "method": method, "teacher": c.get("teacher"),
                                "preset": c.get("preset"), "eval_seeds": ev.get("seeds"), "ci95": ci, "runs": sorted({x for r in rows
                                                                                      for x in r.get("runs", [])})}})
        out[name] = doc
    return out


def _long(col: Column) -> pd.DataFrame:
    f = col.frame
    stat = col.statistic
    long = pd.DataFrame({"model": f["model"], "train_seed": f["train_seed"], "eval_seed": f["eval_seed"],
                         "example_id": f["example_id"].astype(str)})
    split = long["model"].str.rpartition("/")
    long["student"] = split[0].where(split[1] == "/", None)
    long["method"] = split[2]
    long["task"], long["metric"], long["level"] = col.task, col.value, col.level
    if isinstance(stat, MeanOf):
        long["statistic"], long["value"] = "mean", pd.to_numeric(f[stat.column], errors="coerce")
    else:  # recomputed on every resample (ECE ...): the raw fields it needs, no single score
        long["statistic"], long["value"] = f"recompute:{stat.name}", float("nan")
        for field in stat.columns or ():
            long[field] = f[field].to_numpy()
    return long


def per_example_frame(columns: dict[tuple[str, str], Column]) -> pd.DataFrame:
    frames = [_long(col) for _, col in sorted(columns.items())]
    if not frames:
        return pd.DataFrame(columns=ID_COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    extra = sorted(c for c in df.columns if c not in ID_COLUMNS)
    return df[ID_COLUMNS + extra]


def write_exports(run: Run, folder: Path, columns: dict[tuple[str, str], Column]) -> list[Path]:
    """Write both exports under `folder` (stale model files removed); returns the paths written."""
    from ..io import atomic_write_text

    lm = folder / "lm_eval"
    for old in sorted(lm.glob("*.json")):
        old.unlink()
    written = []
    for name, doc in lm_eval_results(run).items():
        atomic_write_text(lm / f"{name}.json", json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
        written.append(lm / f"{name}.json")
    atomic_write_text(folder / "per_example.csv", per_example_frame(columns).to_csv(index=False))
    written.append(folder / "per_example.csv")
    return written
