"""Metric registry, the context a metric is computed from, and the run-scoped evaluation session.

A metric is a function `fn(ctx: EvalContext) -> float | dict[str, float] | None` registered with
its name, version, direction and how it aggregates over seeds. Returning None means "does not
apply here" (e.g. validity on a task with no checker); a dict lets one metric report several
named values (e.g. ECE plus accuracy). Generation metrics read `ctx.predictions`; model metrics
use `ctx.model` / `ctx.teacher` / `ctx.tokenizer`.

Data flows one way: the evaluation loop builds the context and reads back only what metrics
return and what they put on the per-example channel:
- `ctx.record(name, values)`: a numeric per-example value (a row field of per_example.jsonl),
- `ctx.annotate(field, values)`: a JSON field added to each generation record (generations.jsonl).

The per-example contract (`Metric.per_example`), which the statistics layer relies on:
- "mean":      the cell's value `v` equals `mean_of(rows, v)` for each value name `v` the metric
               returns (same scale; the per-example field is named like the value).
- "recompute": `Metric.recompute(rows)` reproduces every value the metric returned from the
               per-example rows (which carry prefixed raw fields such as `ece.confidence`).
- "none":      no per-example breakdown; the metric's docstring says why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

import numpy as np

from ..registry import Registry
from ..schema import Example

PER_EXAMPLE_MODES = ("mean", "recompute", "none")

S = TypeVar("S")


class EvalSession:
    """State that lives for one benchmark run and is shared by all of its eval cells (the judge's
    client, cache and budget; the teacher samples of exposure bias). The runner creates one per
    Benchmark, passes it to every `evaluate` call and calls `close()` at the end of the run.

    Each metric module keeps its own typed state object here: `session.state(JudgeRuns)` returns the
    session's instance of that class, created on first use with no arguments.
    """

    def __init__(self, run_dir: str | Path | None = None):
        self.run_dir = Path(run_dir) if run_dir else None
        self._states: dict[type, Any] = {}

    def state(self, kind: type[S]) -> S:
        if kind not in self._states:
            self._states[kind] = kind()
        return self._states[kind]

    def close(self) -> None:
        """Close every state that holds resources (e.g. judge clients and their SQLite caches) and
        forget all states; the session may be used again afterwards, as if new."""
        states, self._states = list(self._states.values()), {}
        for s in states:
            close = getattr(s, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> "EvalSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Used when a caller passes no session (direct metric calls, or a runner that predates sessions):
# then state is shared process-wide, as module globals used to be.
_DEFAULT_SESSION = EvalSession()


def default_session() -> EvalSession:
    return _DEFAULT_SESSION


def mean_of(rows: Sequence[Mapping[str, Any]], name: str) -> Optional[float]:
    """The "mean" reduction of the per-example contract: Python `sum` over the non-null values of
    field `name`, in row order, divided by their count (None when there are none). Metrics with
    `per_example="mean"` compute their cell value with this same function, so it is reproduced
    bit for bit."""
    return mean_values([r.get(name) for r in rows])


def mean_values(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


@dataclass
class EvalContext:
    task: Any  # kdbench.task.Task
    examples: list[Example]
    predictions: list[str]  # one sampled response per example for this seed
    seed: int
    model: Any = None  # the evaluated model (torch.nn.Module) or None
    tokenizer: Any = None
    teacher: Any = None  # prefer get_teacher(): the teacher is loaded lazily, only if a metric needs it
    teacher_fn: Optional[Callable] = None
    model_label: str = ""
    eval_config: Any = None  # kdbench.config.EvalConfig
    sample_fn: Optional[Callable] = None  # sample_fn(prompts, n_per_prompt, seed) -> list[list[str]]
    sampling: Any = None  # kdbench.sampling.SamplingConfig of this evaluation (metrics that sample reuse it)
    max_prompt_length: int = 256  # prompt tokens kept when a metric encodes prompts itself
    run_dir: Optional[Path] = None  # the benchmark's run folder (None: standalone use)
    session: EvalSession = field(default_factory=default_session)
    artifacts: dict[str, Any] = field(default_factory=dict)  # metrics may leave per-cell data here
    settings: dict[str, Any] = field(default_factory=dict)  # BenchConfig sections metrics read (e.g. judge)
    _checks: Optional[list] = field(default=None, init=False, repr=False)
    _scores: dict[str, dict[int, Optional[float]]] = field(default_factory=dict, init=False, repr=False)
    _annotations: dict[str, list] = field(default_factory=dict, init=False, repr=False)

    def get_teacher(self):
        """The teacher model (None when the benchmark has none); loaded on first use."""
        if self.teacher is None and self.teacher_fn is not None:
            self.teacher = self.teacher_fn()
        return self.teacher

    # -- shared within the cell ---------------------------------------------------------------

    def checks(self) -> list[Optional[dict]]:
        """The task's exact check of every prediction (None per example when the task has no
        checker); computed once per cell and shared by validity, the oracle judge and the records."""
        if self._checks is None:
            self._checks = [self.task.check(ex, p) for ex, p in zip(self.examples, self.predictions)]
        return self._checks

    def has_checker(self) -> bool:
        checks = self.checks()
        return bool(checks) and all(c is not None for c in checks)

    # -- the per-example channel --------------------------------------------------------------

    def record(self, name: str, values: Sequence[Optional[float]], where: Optional[Sequence[int]] = None) -> None:
        """Per-example numeric values of `name`: one per example of `ctx.examples`, or one per index
        in `where` (the others stay null). NaN is stored as null, so the rows stay valid JSON."""
        if not isinstance(name, str) or not name or name == "id":
            raise ValueError(f"per-example value name must be a non-empty string other than 'id', got {name!r}")
        if name in self._scores:
            raise ValueError(f"per-example value '{name}' recorded twice in one cell")
        idx = list(range(len(self.examples))) if where is None else [int(i) for i in where]
        values = list(values)
        if len(values) != len(idx):
            raise ValueError(f"per-example value '{name}': {len(values)} values for {len(idx)} examples")
        out: dict[int, Optional[float]] = {}
        for i, v in zip(idx, values):
            if not 0 <= i < len(self.examples):
                raise ValueError(f"per-example value '{name}': example index {i} out of range")
            out[i] = None if v is None or math.isnan(float(v)) else float(v)
        self._scores[name] = out

    def annotate(self, field_name: str, values: Sequence[Any]) -> None:
        """A JSON field for each generation record (None: the record does not get the field)."""
        values = list(values)
        if len(values) != len(self.examples):
            raise ValueError(f"annotation '{field_name}': {len(values)} values for {len(self.examples)} examples")
        self._annotations[field_name] = values

    def per_example_rows(self) -> list[dict[str, Any]]:
        """One row per example: {"id": ..., <recorded name>: float or None, ...}."""
        names = list(self._scores)
        return [{"id": ex.id, **{n: self._scores[n].get(i) for n in names}} for i, ex in enumerate(self.examples)]

    def annotations(self) -> dict[str, list]:
        return dict(self._annotations)


@dataclass
class Metric:
    name: str
    fn: Callable[[EvalContext], Any]
    version: int = 1
    higher_is_better: bool = True
    aggregate: str = "mean"  # how values over seeds combine: mean (reported with std and n)
    kind: str = "generation"  # generation | model
    description: str = ""
    # For metrics that return a dict: direction of each sub-value (default: higher_is_better).
    sub_directions: dict[str, bool] = field(default_factory=dict)
    per_example: str = "none"  # mean | recompute | none: see the module docstring
    recompute_fn: Optional[Callable[[list[dict]], dict[str, float]]] = None
    # Optional columnar form of recompute_fn (field -> float array, NaN = absent), for the bootstrap's
    # thousands of resamples; it must give recompute_fn's values (tests/metrics/test_per_example_contract.py).
    recompute_arrays_fn: Optional[Callable[[dict], dict[str, float]]] = None
    # What besides the version changes this metric's numbers, from the benchmark settings (e.g.
    # which judge); None: nothing. Part of the eval cell's cache key.
    key_fn: Optional[Callable[[Mapping[str, Any]], Any]] = None

    def direction(self, value_name: str) -> bool:
        return self.sub_directions.get(value_name, self.higher_is_better)

    def cache_key(self, settings: Mapping[str, Any]) -> Any:
        """This metric's part of the eval cell's cache key beyond its version (None: nothing)."""
        return None if self.key_fn is None else self.key_fn(settings or {})

    def recompute(self, rows: list[dict]) -> dict[str, float]:
        """The cell's values from its per-example rows (per_example "recompute" only)."""
        if self.per_example != "recompute" or self.recompute_fn is None:
            raise ValueError(f"metric '{self.name}' has per_example='{self.per_example}', not 'recompute'")
        return {k: v for k, v in self.recompute_fn(rows).items() if v is not None}

    def recompute_columns(self, arrays: dict) -> dict[str, float]:
        """`recompute` on columns (field -> array, NaN or None = absent): the columnar form when the
        metric has one, else rows rebuilt from the columns."""
        if self.recompute_arrays_fn is not None:
            cols = {c: np.asarray(v, dtype=float) for c, v in arrays.items()}
            return {k: v for k, v in self.recompute_arrays_fn(cols).items() if v is not None}
        names = list(arrays)
        rows = [{c: (None if v is None or v != v else v) for c, v in zip(names, vals)}
                for vals in zip(*(list(arrays[c]) for c in names))]
        return self.recompute(rows)

    def reproduce(self, rows: list[dict]) -> dict[str, float]:
        """The cell's values from its per-example rows, whichever contract applies ({} for "none")."""
        if self.per_example == "mean":
            v = mean_of(rows, self.name)
            return {} if v is None else {self.name: v}
        if self.per_example == "recompute":
            return self.recompute(rows)
        return {}


METRICS: Registry[Metric] = Registry("metric")


def register_metric(name: str, *, version: int = 1, higher_is_better: bool = True, kind: str = "generation",
                    description: str = "", aggregate: str = "mean",
                    sub_directions: dict[str, bool] | None = None, per_example: str = "none",
                    recompute: Optional[Callable[[list[dict]], dict[str, float]]] = None,
                    recompute_arrays: Optional[Callable[[dict], dict[str, float]]] = None,
                    cache_key: Optional[Callable[[Mapping[str, Any]], Any]] = None):
    if per_example not in PER_EXAMPLE_MODES:
        raise ValueError(f"metric '{name}': per_example must be one of {', '.join(PER_EXAMPLE_MODES)}, "
                         f"got {per_example!r}")
    if (per_example == "recompute") != (recompute is not None):
        raise ValueError(f"metric '{name}': a recompute function goes with per_example='recompute' (and only then)")

    def deco(fn):
        METRICS.add(name, Metric(name=name, fn=fn, version=version, higher_is_better=higher_is_better,
                                 aggregate=aggregate, kind=kind,
                                 description=description or (fn.__doc__ or "").strip().splitlines()[0],
                                 sub_directions=sub_directions or {}, per_example=per_example,
                                 recompute_fn=recompute, recompute_arrays_fn=recompute_arrays,
                                 key_fn=cache_key),
                    description or (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return deco
