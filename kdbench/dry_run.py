"""`--dry-run`: an inventory of what a run would load, without training or writing anything."""
from __future__ import annotations

import dataclasses
from . import models as M
from . import vocab
from .errors import DataError
from .schema import Example
from .task import Task
from .taskset import TaskSet, no_prompt_fits


@dataclasses.dataclass
class DryRun:
    """What `--dry-run` found. Exit status policy (cli): errors -> 2; unavailable eval tasks alone -> 0.

    The dry run is an inventory: an eval task whose data is simply absent (no local files, hub not
    reachable or offline) is listed as unavailable with its lookup list, and the others are still
    reported. Malformed data, a train task without data, or a bad config are errors. A real run is
    stricter: its validate() stops on any task without data, so drop unavailable tasks from --tasks.
    """

    text: str
    errors: list[str]
    unavailable: list[str]


_PROMPT_SHOWN = 1200  # characters of the example prompt printed (long contexts are cut, with a count)


def _tokenizer(cfg, loaded: list[Task]):
    """(tokenizer, description) the run would use, without writing anything: a real teacher's own
    tokenizer, or the built-in recipe (kdbench.vocab) built in memory on the tasks that loaded."""
    if not M.is_preset(cfg.teacher):
        return M.load_tokenizer(cfg.teacher), vocab.describe(cfg, loaded)
    return vocab.build(cfg, loaded), vocab.describe(cfg, loaded)


def dry_run(c, tasks: TaskSet) -> DryRun:
    """Per task and split: examples loaded, dropped (and why), prompts over max_prompt_length under
    the run's tokenizer, and one rendered prompt. Trains no model and writes nothing. Call
    validate(data=False) first (names, configs, models, devices)."""
    errors: list[str] = []
    unavailable: list[str] = []
    n_ts = len(c.train_seed_list())
    n_points = 1
    for values in c.tune.values():
        n_points *= len(values)
    # teacher + per student: base + one per method and training seed (only the selected tuning point)
    n_models = 1 + len(c.students) * (1 + len(c.methods) * n_ts)
    lines = [f"preset {c.preset}: teacher {c.teacher}; students {', '.join(c.students)}; "
             f"methods {', '.join(c.methods)}",
             f"train task {c.train_task}; eval tasks {', '.join(c.tasks)}; seeds {c.eval.seeds}; "
             f"max_length {c.max_length}, max_prompt_length {c.max_prompt_length}, "
             f"max_new_tokens {c.eval.max_new_tokens}, eval.max_examples {c.eval.max_examples}",
             f"plan: {len(c.students) * len(c.methods) * n_ts * n_points} training cells ({n_ts} training "
             f"seed(s){f', {n_points} tuning points' if n_points > 1 else ''}), "
             f"{n_models * len(c.tasks) * len(c.eval.seeds)} evaluation cells; device {c.device}, "
             f"teacher_device {c.teacher_device}, dtype {c.dtype}"
             + (f"; students through LoRA (r {c.peft.r}, alpha {c.peft.alpha:g}, dropout {c.peft.dropout:g}, "
                f"targets {','.join(c.peft.target_modules)})" if c.peft.enabled else "")
             + (f"; tracking to {c.report_to}" if c.report_to != "none" else ""), ""]
    loaded: dict[str, dict[str, list[Example]]] = {}
    failed: dict[str, str] = {}
    no_prompt: set[str] = set()  # tasks with a split whose every prompt is over the limit
    for name in dict.fromkeys([c.train_task] + c.tasks):
        task = tasks.get(name)
        splits = (["train"] if name == c.train_task else []) + (["test"] if name in c.tasks else [])
        loaded[name] = {}
        for split in splits:
            try:
                exs = task.examples(split)
            except DataError as e:
                absent = hasattr(task, "find_local") and task.find_local(split) is None
                failed[name] = str(e)
                if absent and split != "train":  # no train data: nothing could be trained at all
                    unavailable.append(name)
                else:
                    errors.append(f"{name}/{split}: {e}")
                break
            if not exs:
                errors.append(f"{name}/{split}: split is empty")
            loaded[name][split] = exs
    ready = [tasks.get(n) for n in loaded if n not in failed]
    tok, tok_desc = _tokenizer(c, ready) if ready else (None, "")
    if tok is not None:
        lines.append(f"prompt lengths counted with: {tok_desc}")
        lines.append("")
    for name, by_split in loaded.items():
        task = tasks.get(name)
        for split, exs in by_split.items():
            head = f"{name}/{split}: {len(exs)} examples loaded"
            info = task.describe_load(split) if hasattr(task, "describe_load") else {}
            if info.get("dropped"):
                head += "; dropped while loading: " + ", ".join(f"{k} {v}" for k, v in info["dropped"].items())
            lines.append(head)
            if info.get("source"):
                lines.append(f"  source: {info['source']}")
            for k, v in (info.get("notes") or {}).items():
                lines.append(f"  note: {k}: {v}")
            if tok is not None and exs:
                n_tok = [len(ids) for ids in tok([ex.prompt for ex in exs], add_special_tokens=False)["input_ids"]]
                over = sum(n > c.max_prompt_length for n in n_tok)
                lines.append(f"  prompt length: {len(exs) - over} kept, {over} dropped as prompt_too_long "
                             f"(> max_prompt_length {c.max_prompt_length} tokens; longest {max(n_tok)})")
                if over == len(exs):  # a real run refuses this before training (TaskSet.filter_prompts)
                    errors.append(no_prompt_fits(f"{name}/{split}", len(exs), c.max_prompt_length, min(n_tok)))
                    no_prompt.add(name)
                elif over > len(exs) / 2:
                    lines.append(f"  warning: most prompts of {name}/{split} exceed max_prompt_length; "
                                 "raise it or use a preset made for real tasks (--preset tiny-real)")
        if name in failed:
            status = "UNAVAILABLE" if name in unavailable else "ERROR"
            lines.append(f"{name}: {status}")
            lines += ["  " + ln for ln in failed[name].splitlines()]
        elif by_split:
            shown_exs = by_split.get("test") or next(iter(by_split.values()))
            ex = shown_exs[0] if shown_exs else None
            if ex is not None:
                shown = ex.prompt if len(ex.prompt) <= _PROMPT_SHOWN else (
                    ex.prompt[:_PROMPT_SHOWN] + f"[... {len(ex.prompt) - _PROMPT_SHOWN} more characters]")
                lines.append(f"  example prompt ({ex.id}):")
                lines += ["  | " + ln for ln in shown.split("\n")]
                ref = ex.references[0]
                lines.append(f"  reference: {ref[:200]!r}" + (" ..." if len(ref) > 200 else ""))
        lines.append("")
    ok = [n for n in loaded if n not in failed and n not in no_prompt]
    lines.append(f"ready: {', '.join(ok) or 'none'}")
    if unavailable:
        lines.append(f"unavailable (no data; listed above with where it was looked for): {', '.join(unavailable)}. "
                     "A real run stops at validation on these: remove them from --tasks or add their data.")
    if errors:
        lines.append(f"errors ({len(errors)}):")
        lines += [f"  - {e.splitlines()[0]}" for e in errors]
    return DryRun("\n".join(lines), errors, unavailable)

