"""The `judge` metric: MiniLLM's "GPT-4 feedback" score on the benchmark's generations.

score = 100 * sum(model ratings) / sum(reference ratings), each pair judged in both orders.
The backend comes from `settings['judge']` (BenchConfig.judge): the keys of `JudgeConfig` plus
    backend: "auto" (default) | "oracle" | "openai"
    order:   "both" (default) | "model_first" | "reference_first"
"auto" uses the oracle when the task has an exact checker (the toy world), else the LLM judge when
`judge_available()`, else skips the metric with one log line per run (the rest of the benchmark
runs). The oracle and an LLM judge give different numbers, so `artifacts['judge']['label']` names
which one made them ("oracle" or the judge model).

LLM-judge state lives per benchmark run (per `run_dir` and settings), not per cell: one client and
SQLite cache (`<run_dir>/judge_cache.sqlite` unless `judge.cache_path`), the call/token budget
counted over the whole run, and the prompt written once to `<run_dir>/judge_prompt.txt`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError
from ..io import atomic_write_text
from ..registry import suggest
from .base import EvalContext, register_metric
from .judge import (
    JUDGE_PROMPT_VERSION,
    ORDERS,
    JudgeClient,
    JudgeConfig,
    JudgeResult,
    OracleJudge,
    judge_available,
    judge_prompt_template,
)
from .toy import _checks

log = logging.getLogger("kdbench")

BACKENDS = ("auto", "oracle", "openai")
_ORDER_CHOICES = ("both",) + ORDERS
_CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(JudgeConfig))


def judge_settings(raw: Optional[dict]) -> tuple[str, JudgeConfig, str]:
    """(backend, JudgeConfig, order) from BenchConfig.judge; ConfigError names a bad key or value.
    Cheap and offline, so a runner can call it while validating the configuration."""
    raw = dict(raw or {})
    backend = raw.pop("backend", "auto") or "auto"
    order = raw.pop("order", "both") or "both"
    if backend not in BACKENDS:
        raise ConfigError(f"config key 'judge.backend': '{backend}' is not one of {', '.join(BACKENDS)}."
                          + suggest(str(backend), list(BACKENDS)))
    if order not in _ORDER_CHOICES:
        raise ConfigError(f"config key 'judge.order': '{order}' is not one of {', '.join(_ORDER_CHOICES)}")
    valid = list(_CONFIG_KEYS) + ["backend", "order"]
    for k in raw:
        if k not in _CONFIG_KEYS:
            raise ConfigError(f"config key 'judge.{k}' is unknown; valid keys: {', '.join(valid)}." + suggest(k, valid))
    return backend, JudgeConfig(**raw), order


@dataclass
class _Run:
    """LLM-judge state of one benchmark run, shared by its eval cells."""

    run_dir: Optional[Path]
    client: Optional[JudgeClient] = None
    calls: int = 0
    tokens: int = 0
    cache_hits: int = 0
    logged: set = field(default_factory=set)


_RUNS: dict[str, _Run] = {}


def _run_state(ctx: EvalContext) -> _Run:
    run_dir = ctx.cache.get("run_dir")
    key = json.dumps([str(run_dir) if run_dir else None, ctx.settings.get("judge") or {}], sort_keys=True, default=str)
    if key not in _RUNS:
        _RUNS[key] = _Run(Path(run_dir) if run_dir else None)
    return _RUNS[key]


def _once(run: _Run, msg: str, level: int = logging.INFO) -> None:
    if msg not in run.logged:
        run.logged.add(msg)
        log.log(level, "%s", msg)


def reset_judge_runs() -> None:
    """Close every run's judge client and forget the per-run state (a new process, in effect)."""
    for run in _RUNS.values():
        if run.client is not None:
            run.client.close()
    _RUNS.clear()


def _items(ctx: EvalContext, checks: Optional[list] = None) -> list[dict[str, Any]]:
    out = []
    for i, (ex, pred) in enumerate(zip(ctx.examples, ctx.predictions)):
        item = {"id": ex.id, "instruction": ex.instruction or ex.prompt, "input": ex.input or "",
                "reference": ex.references[0] if ex.references else "", "response": pred}
        if checks is not None:
            item["check"] = checks[i]
        out.append(item)
    return out


def _task_name(task: Any) -> str:
    from ..task import TASKS

    for name in TASKS.names():  # tasks do not carry their registered name
        if TASKS.get(name) is type(task):
            return name
    return getattr(task, "name", "") or type(task).__name__


def _has_checker(ctx: EvalContext) -> bool:
    checks = _checks(ctx)
    return bool(checks) and all(c is not None for c in checks)


def _client(run: _Run, cfg: JudgeConfig) -> JudgeClient:
    if run.client is None:
        cache = cfg.cache_path or (str(run.run_dir / "judge_cache.sqlite") if run.run_dir else None)
        if cache is None:
            _once(run, "judge: no run folder and no judge.cache_path; judge calls are not cached", logging.WARNING)
        run.client = JudgeClient(cfg, cache=cache)
        if run.run_dir is not None:
            _write_prompt(run.run_dir, cfg)
    return run.client


def _write_prompt(run_dir: Path, cfg: JudgeConfig) -> None:
    header = (f"# kdbench LLM-judge prompt, version {JUDGE_PROMPT_VERSION}\n"
              f"# judge model: {cfg.model}; endpoint: {cfg.base_url or 'the OpenAI API'}; "
              f"temperature {cfg.temperature}; reply max tokens {cfg.reply_max_tokens}\n"
              "# {request} = the instruction, followed by '[Input]' and the input when there is one;\n"
              "# {answer_1}/{answer_2} = the model's answer and the reference answer, judged in both orders.\n"
              "# The reply's first line must hold the two 1-10 ratings. Everything below the line is sent verbatim.\n"
              "# " + "-" * 70 + "\n")
    atomic_write_text(run_dir / "judge_prompt.txt", header + judge_prompt_template() + "\n")


def _artifact(result: JudgeResult, backend: str, **extra: Any) -> dict[str, Any]:
    return {"label": result.judge, "backend": backend, "prompt_version": result.prompt_version, "order": result.order,
            "n_items": result.n_items, "n_scored": result.n_scored, "missing": result.n_missing,
            "missing_reasons": result.missing_reasons, "calls": result.n_calls, "cache_hits": result.n_cache_hits,
            "unparsable": result.n_unparsable, "tokens": result.tokens_used,
            "disagreement_rate": result.disagreement_rate, "n_order_pairs": result.n_order_pairs, **extra}


@register_metric("judge", version=1, higher_is_better=True,
                 description="LLM-judge (or toy oracle) score: 100 * sum(model ratings) / sum(reference ratings)",
                 sub_directions={"judge": True, "judge_missing": False, "judge_disagreement": False})
def _judge_metric(ctx: EvalContext):
    backend, cfg, order = judge_settings(ctx.settings.get("judge"))
    run = _run_state(ctx)
    task_name = _task_name(ctx.task)
    if not ctx.predictions:
        return None
    use_oracle = backend == "oracle" or (backend == "auto" and _has_checker(ctx))
    if use_oracle:
        if not _has_checker(ctx):
            _once(run, f"judge skipped on task '{task_name}': judge.backend 'oracle' needs a task with an exact "
                       "checker (the toy world); use backend 'openai' or 'auto'", logging.WARNING)
            return None
        result = OracleJudge(lambda item: item["check"]).judge_pairs(_items(ctx, _checks(ctx)), order=order)
        _once(run, f"judge on task '{task_name}': oracle (the task's exact checker on the 1-10 scale), no LLM calls")
        ctx.artifacts["judge"] = _artifact(result, "oracle")
        _keep_ratings(ctx, result)
        return {"judge": result.score}

    ok, why = judge_available(cfg)
    if not ok:
        _once(run, f"judge metric skipped for this run: {why}. The rest of the benchmark runs.", logging.WARNING)
        return None
    client = _client(run, cfg)
    # The budget is per run: hand each cell what the earlier cells left.
    remaining = {}
    if cfg.max_calls is not None:
        remaining["max_calls"] = max(0, cfg.max_calls - run.calls)
    if cfg.max_tokens is not None:
        remaining["max_tokens"] = max(0, cfg.max_tokens - run.tokens)
    if remaining:
        client.config = dataclasses.replace(client.config, **remaining)
        if 0 in remaining.values():
            _once(run, "judge budget of this run is used up (judge.max_calls / judge.max_tokens); uncached pairs "
                       "are recorded as missing", logging.WARNING)
    result = client.judge_pairs(_items(ctx), order=order)
    run.calls += result.n_calls
    run.tokens += result.tokens_used
    run.cache_hits += result.n_cache_hits
    log.info("judge %s on %s/%s seed %d: %d new calls, %d cache hits, %d missing (run total: %d calls, "
             "%d cache hits, %d tokens)", client.label, task_name, ctx.model_label or "model", ctx.seed,
             result.n_calls, result.n_cache_hits, result.n_missing, run.calls, run.cache_hits, run.tokens)
    ctx.artifacts["judge"] = _artifact(result, "openai", cache_path=str(client.cache.path) if client.cache else None,
                                       run_calls=run.calls, run_tokens=run.tokens)
    _keep_ratings(ctx, result)
    values: dict[str, Any] = {"judge": result.score, "judge_missing": result.n_missing}
    if result.disagreement_rate is not None:
        values["judge_disagreement"] = 100.0 * result.disagreement_rate
    return values


def _keep_ratings(ctx: EvalContext, result: JudgeResult) -> None:
    """Per-example ratings for generations.jsonl (written by the evaluation loop)."""
    ctx.cache["judge_ratings"] = [
        {"model": it.model_rating, "reference": it.reference_rating, "missing": it.missing_reason}
        for it in result.items
    ]
