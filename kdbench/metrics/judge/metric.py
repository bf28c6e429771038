"""The `judge` metric: MiniLLM's "GPT-4 feedback" score on the benchmark's generations.

score = 100 * sum(model ratings) / sum(reference ratings), each pair judged in both orders.
The backend comes from `settings['judge']` (BenchConfig.judge): the keys of `JudgeConfig` plus
    backend: "auto" (default) | "oracle" | "openai"
    order:   "both" (default) | "model_first" | "reference_first"
"auto" uses the oracle when the task has an exact checker (the toy world), else the LLM judge when
`judge_available()`, else skips the metric with one log line per run (the rest of the benchmark
runs). The oracle and an LLM judge give different numbers, so `artifacts['judge']['label']` names
which one made them ("oracle" or the judge model).

LLM-judge state lives per benchmark run (`JudgeRuns` in the run's EvalSession, per run folder and
settings), not per cell: one client and SQLite cache (`<run_dir>/judge_cache.sqlite` unless
`judge.cache_path`), the call/token budget counted over the whole run, and the prompt written once
to `<run_dir>/judge_prompt.txt`. `EvalSession.close()` closes the clients.

Per example: `judge.model` / `judge.reference` (the ratings averaged over orders; null when
missing), and for the LLM judge `judge.missing` (1/0) and `judge.flip` (1/0: the two orders prefer
different answers; null unless judged in both). The score is a ratio of sums, so it is recomputed
from them, not averaged. Generation records get a `judge` field with the item's ratings.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from ...io import atomic_write_text
from ..base import EvalContext, default_session, register_metric
from .client import JudgeClient
from .config import JudgeConfig, judge_available, judge_settings
from .oracle import OracleJudge
from .prompt import JUDGE_PROMPT_VERSION, judge_prompt_template
from .result import JudgeResult, ratio_score

log = logging.getLogger("kdbench")


@dataclass
class _Run:
    """LLM-judge state of one benchmark run, shared by its eval cells."""

    run_dir: Optional[Path]
    client: Optional[JudgeClient] = None
    calls: int = 0
    tokens: int = 0
    cache_hits: int = 0
    logged: set = field(default_factory=set)


class JudgeRuns:
    """EvalSession state: the judge runs of a session, one per (run folder, judge settings)."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}

    def get(self, run_dir: Optional[Path], settings: Mapping[str, Any]) -> _Run:
        key = json.dumps([str(run_dir) if run_dir else None, settings.get("judge") or {}], sort_keys=True,
                         default=str)
        if key not in self._runs:
            self._runs[key] = _Run(Path(run_dir) if run_dir else None)
        return self._runs[key]

    def close(self) -> None:
        """Close every run's judge client (and the SQLite cache it owns)."""
        runs, self._runs = list(self._runs.values()), {}
        for run in runs:
            if run.client is not None:
                run.client.close()


def reset_judge_runs() -> None:
    """Close and forget the judge state of the default session (used when evaluate() gets no
    session): a new process, in effect."""
    default_session().close()


def _once(run: _Run, msg: str, level: int = logging.INFO) -> None:
    if msg not in run.logged:
        run.logged.add(msg)
        log.log(level, "%s", msg)


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
    from ...task import TASKS

    for name in TASKS.names():  # tasks do not carry their registered name
        if TASKS.get(name) is type(task):
            return name
    return getattr(task, "name", "") or type(task).__name__


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


def _cache_key(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Switching judges must not reuse eval cells scored by the old one."""
    raw = settings.get("judge") or {}
    key = {k: raw.get(k) for k in ("backend", "model", "base_url", "order")}
    key["prompt_version"] = JUDGE_PROMPT_VERSION
    return key


def _recompute(rows: list[dict]) -> dict[str, float]:
    scored = [r for r in rows if r.get("judge.model") is not None and r.get("judge.reference") is not None]
    out: dict[str, Any] = {"judge": ratio_score([r["judge.model"] for r in scored],
                                                [r["judge.reference"] for r in scored])}
    missing = [r["judge.missing"] for r in rows if r.get("judge.missing") is not None]
    if missing:  # the LLM judge reports its missing pairs; the oracle never misses one
        out["judge_missing"] = float(sum(missing))
    flips = [r["judge.flip"] for r in rows if r.get("judge.flip") is not None]
    if flips:
        out["judge_disagreement"] = 100.0 * (sum(flips) / len(flips))
    return out


def _recompute_arrays(cols: dict) -> dict[str, float]:
    """`_recompute` on columns (NaN = absent), for the bootstrap: the same sums in the same order."""
    def present(name):
        v = cols.get(name)
        return v[~np.isnan(v)] if v is not None else np.empty(0)

    m, r = cols.get("judge.model"), cols.get("judge.reference")
    keep = (~np.isnan(m) & ~np.isnan(r)) if m is not None and r is not None else None
    out: dict[str, Any] = {"judge": ratio_score(m[keep].tolist(), r[keep].tolist()) if keep is not None else None}
    missing = present("judge.missing")
    if len(missing):
        out["judge_missing"] = float(sum(missing.tolist()))
    flips = present("judge.flip")
    if len(flips):
        out["judge_disagreement"] = 100.0 * (sum(flips.tolist()) / len(flips))
    return out


def _keep_ratings(ctx: EvalContext, result: JudgeResult, llm: bool) -> None:
    """Per-example ratings: the channel's numeric fields, and the generation records' `judge` field."""
    items = result.items
    ctx.record("judge.model", [it.model_rating for it in items])
    ctx.record("judge.reference", [it.reference_rating for it in items])
    if llm:
        ctx.record("judge.missing", [1.0 if it.missing else 0.0 for it in items])
        ctx.record("judge.flip", [None if it.order_flip is None else float(it.order_flip) for it in items])
    ctx.annotate("judge", [{"model": it.model_rating, "reference": it.reference_rating, "missing": it.missing_reason}
                           for it in items])


@register_metric("judge", version=1, higher_is_better=True, per_example="recompute", recompute=_recompute,
                 recompute_arrays=_recompute_arrays,
                 cache_key=_cache_key,
                 description="LLM-judge (or toy oracle) score: 100 * sum(model ratings) / sum(reference ratings)",
                 sub_directions={"judge": True, "judge_missing": False, "judge_disagreement": False})
def _judge_metric(ctx: EvalContext):
    backend, cfg, order = judge_settings(ctx.settings.get("judge"))
    run = ctx.session.state(JudgeRuns).get(ctx.run_dir, ctx.settings)
    task_name = _task_name(ctx.task)
    if not ctx.predictions:
        return None
    use_oracle = backend == "oracle" or (backend == "auto" and ctx.has_checker())
    if use_oracle:
        if not ctx.has_checker():
            _once(run, f"judge skipped on task '{task_name}': judge.backend 'oracle' needs a task with an exact "
                       "checker (the toy world); use backend 'openai' or 'auto'", logging.WARNING)
            return None
        result = OracleJudge(lambda item: item["check"]).judge_pairs(_items(ctx, ctx.checks()), order=order)
        _once(run, f"judge on task '{task_name}': oracle (the task's exact checker on the 1-10 scale), no LLM calls")
        ctx.artifacts["judge"] = _artifact(result, "oracle")
        _keep_ratings(ctx, result, llm=False)
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
    _keep_ratings(ctx, result, llm=True)
    values: dict[str, Any] = {"judge": result.score, "judge_missing": result.n_missing}
    if result.disagreement_rate is not None:
        values["judge_disagreement"] = 100.0 * result.disagreement_rate
    return values
