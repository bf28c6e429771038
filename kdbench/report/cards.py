"""Hugging Face model cards: a README.md next to every distilled student's saved weights.

`summarize` writes one per train cell (every method and training seed) into the folder its
result.json names (`model/` of the cell, or the cached SFT stage's), so the folder is ready for
the Hub as it is: `hf upload <user>/<name> <model folder>` (the one command, not run here).
The card holds what a reader of the model needs: base model, teacher, method and its config,
training data and budget, the student's leaderboard rows with 95% CIs, kdbench version and commit.
The YAML header is written through huggingface_hub's ModelCardData, so the Hub reads the rows as
`model-index` evaluation results. A merged run writes no cards: its models belong to its sources.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..io import atomic_write_text
from ..layout import RunLayout, label_of
from .data import Run
from .provenance import git_commit

CARD = "README.md"
PUSH_COMMAND = "hf upload <your-user>/<model-name> {folder}"


def _is_hub_id(name: str | None) -> bool:
    """Only a Hub id may go into `base_model` (the Hub validates it); presets and paths go in the text."""
    return bool(name) and name.count("/") == 1 and not Path(name).expanduser().exists()


def _fmt(x) -> str:
    return "-" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def _data_text(task: str, data) -> str:
    """The train task, its version and size settings, from the cell's frozen data fingerprint."""
    spec = data.get("train_task") if isinstance(data, dict) else None
    if not isinstance(spec, dict):
        return f"task `{task}`, train split"
    opts = {k: v for k, v in (spec.get("extra") or {}).items()}
    if spec.get("max_train") is not None:
        opts["max_train"] = spec["max_train"]
    text = f"task `{spec.get('task', task)}` v{spec.get('version', '-')}, train split"
    if spec.get("data_dir"):
        text += f" from `{spec['data_dir']}`"
    return text + (" (" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else "")


def _rows(run: Run, student: str, method: str) -> list[dict]:
    return [r for r in run.rows if r["student"] == label_of(student) and r["method"] == method]


def _card_data(run: Run, student: str, method: str, rows: list[dict]):
    from huggingface_hub import EvalResult, ModelCardData

    results = [EvalResult(task_type="text-generation", dataset_type=r["task"], dataset_name=r["task"],
                          dataset_split="test", metric_type=r["metric"], metric_value=r["mean"],
                          metric_name=r["metric"],
                          metric_config=(f"mean over {r['n_seeds']} seeds; 95% CI [{_fmt(r.get('ci_low'))}, "
                                         f"{_fmt(r.get('ci_high'))}]"))
               for r in rows if r.get("mean") is not None]
    return ModelCardData(library_name="transformers", pipeline_tag="text-generation",
                         tags=["kdbench", "knowledge-distillation", method],
                         base_model=student if _is_hub_id(student) else None,
                         model_name=f"{label_of(student)}-{method}", eval_results=results or None)


def render_card(run: Run, cell: dict, student: str, method: str) -> str:
    """The card's text for one train cell (its result/config records as summarize read them)."""
    from .. import __version__

    res, frozen, c = cell.get("result") or {}, cell.get("config") or {}, run.config
    budget, counters = res.get("budget") or {}, res.get("counters") or {}
    rows = _rows(run, student, method)
    teacher = frozen.get("teacher", c.get("teacher")) if "teacher" in frozen or method != "sft" else None
    method_cfg = frozen.get("method_config") or (c.get("method_config") or {}).get(method) or {}
    train_cfg = frozen.get("train") or {}
    task = c.get("train_task", "toy")
    init = budget.get("init") or frozen.get("student_init") or "base"
    folder = res.get("model_path") or str(cell["dir"] / "model")
    if "data" not in frozen:  # a shared-stage method (sft): its stage recorded the full spec
        frozen = {**RunLayout.stage_spec_of(folder), **frozen}
    facts = [
        ("base model", f"`{student}`" + (" (its SFT student: MiniLLM's initialisation)" if init == "sft" else "")),
        ("teacher", f"`{teacher}`" if teacher else "none (trained on the gold responses only)"),
        ("method", f"`{method}` (kdbench methods/{method}.py)"),
        ("training seed", _fmt(res.get("train_seed")) if res.get("train_seed") is not None else "one run"),
        ("training data", _data_text(task, frozen.get("data"))),
        ("budget", f"{_fmt(budget.get('steps'))} steps x batch {_fmt(budget.get('batch_size'))}, lr "
                   f"{_fmt(budget.get('lr'))} (budget class {budget.get('budget_class', '-')})"),
        ("tokens", ", ".join(f"{k} {v:,}" for k, v in counters.items() if isinstance(v, (int, float))) or "-"),
        ("kdbench", f"{__version__}, commit {git_commit(run) or 'not available'}"),
        ("cell key", f"`{res.get('key', '-')}` (hash of the frozen config below)"),
    ]
    lines = [f"# {label_of(student)} distilled with {method} (kdbench)", "",
             f"A student trained by the kdbench benchmark `{c.get('preset', '-')}`: one row of a controlled "
             "comparison of knowledge-distillation methods (same teacher, data and budget for every method).", "",
             "## Training", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts]
    lines += ["", "Method config:", "", "```json", json.dumps(method_cfg, indent=2, sort_keys=True), "```", "",
              "Training config:", "", "```json", json.dumps(train_cfg, indent=2, sort_keys=True), "```", "",
              "## Evaluation", "",
              "This method's leaderboard rows (all its training seeds together): mean over training and "
              "evaluation seeds, 95% CI from the hierarchical bootstrap over training seeds, prompts and "
              "evaluation seeds.", "",
              "| task | metric | mean | 95% CI | seeds | prompts |", "|---|---|---:|---|---:|---:|"]
    for r in rows:
        ci = f"[{_fmt(r.get('ci_low'))}, {_fmt(r.get('ci_high'))}]" if r.get("ci_low") is not None else "-"
        lines.append(f"| {r['task']} | {r['metric']} | {_fmt(r['mean'])} | {ci} | {r['n_seeds']} | "
                     f"{_fmt(r.get('n_prompts'))} |")
    if not rows:
        lines.append("| - | no finished evaluation yet | | | | |")
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f"model = AutoModelForCausalLM.from_pretrained({folder!r})",
              f"tokenizer = AutoTokenizer.from_pretrained({folder!r})", "```", "",
              "To publish this folder (card included) on the Hugging Face Hub:", "", "```bash",
              PUSH_COMMAND.format(folder=folder), "```", ""]
    header = _card_data(run, student, method, rows).to_yaml()
    return f"---\n{header}\n---\n\n" + "\n".join(lines)


def write_cards(run: Run) -> list[Path]:
    """A card in every saved student folder of the run (none in a merged run); returns the paths."""
    if run.sources:
        return []
    written = []
    for (student_label, method), first in sorted(run.train.items()):
        for cell in first.get("runs", [first]):
            res = cell.get("result") or {}
            folder = Path(res["model_path"]) if res.get("model_path") else None
            if not cell.get("done") or folder is None or not (folder / "config.json").exists():
                continue  # unfinished, or the weights are not on this machine
            student = res.get("student") or student_label
            atomic_write_text(folder / CARD, render_card(run, cell, student, method))
            written.append(folder / CARD)
    return written
