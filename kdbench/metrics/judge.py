"""LLM-judge feedback ("GPT-4 score" in MiniLLM), usable standalone.

MiniLLM asks GPT-4 to rate the model's answer and the golden answer 1-10 (helpfulness, relevance,
accuracy, level of detail) and reports 100 * sum(model ratings) / sum(golden ratings). The paper's
prompt was never published, so the prompt below is ours and is versioned: a number is only
comparable with numbers made under the same `JUDGE_PROMPT_VERSION` and judge model.

Pieces:
- `render_judge_prompt` / `parse_scores`: the prompt and the strict reader of its first line.
- `JudgeCache`: SQLite, one row per paid call, keyed by sha256(judge model, prompt version, prompt).
- `JudgeClient`: the `openai` client against any OpenAI-compatible endpoint, with our own retry
  loop, bounded concurrency, a per-run call/token budget, and the cache. Never raises on a bad
  reply or a failed call: that pair is recorded as missing, with a reason.
- `OracleJudge`: the same interface, rating from an exact checker (the toy world), no network.
- `judge_available`: whether a judge can run with the given settings, and why not.

Each pair is judged in both presentation orders by default (LLM judges favour one position); the
two ratings of each answer are averaged, and the order-disagreement rate is reported.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from ..errors import ConfigError

log = logging.getLogger("kdbench.judge")

JUDGE_PROMPT_VERSION = "kdbench-judge-v1"

ORDERS = ("model_first", "reference_first")

JUDGE_SYSTEM_PROMPT = (
    "You are a fair and careful reviewer of answers written by AI assistants. "
    "You judge what each answer says on its own merits."
)

# Delimiters are bracketed phrases rather than Markdown headers because model answers
# (Alpaca-style templates) often contain '###' lines themselves.
_JUDGE_USER_TEMPLATE = """A user gave an AI assistant the request below. Two assistants answered it.

[Request]
{request}

[Assistant 1's answer begins]
{answer_1}
[Assistant 1's answer ends]

[Assistant 2's answer begins]
{answer_2}
[Assistant 2's answer ends]

Rate each answer on a scale from 1 to 10, where 10 is best, considering its helpfulness, \
relevance, accuracy and level of detail. Judge the content, not the length, and do not let the \
order in which the answers are shown influence your ratings.

Put the two ratings alone on the first line of your reply, as two whole numbers separated by a \
single space: first the rating of Assistant 1, then the rating of Assistant 2 (for example: 8 6). \
From the second line on, explain your ratings in a few sentences."""


def render_judge_prompt(instruction: str, input: str, answer_1: str, answer_2: str) -> tuple[str, str]:
    """(system, user) messages asking for ratings of Assistant 1 and Assistant 2."""
    request = instruction.strip()
    if input and input.strip():
        request += "\n\n[Input]\n" + input.strip()
    user = _JUDGE_USER_TEMPLATE.format(request=request, answer_1=answer_1.strip(), answer_2=answer_2.strip())
    return JUDGE_SYSTEM_PROMPT, user


def judge_prompt_template() -> str:
    """The exact judge prompt with its placeholders ({request}, {answer_1}, {answer_2}), as written
    into a run folder so that a reader knows what the judge was asked."""
    return prompt_text(JUDGE_SYSTEM_PROMPT, _JUDGE_USER_TEMPLATE)


def prompt_text(system: str, user: str) -> str:
    """The full text that identifies a judge call (what the cache key hashes)."""
    return f"[system]\n{system}\n[user]\n{user}"


_NUM = r"(\d+(?:\.\d+)?)(?:\s*/\s*10)?"
_SCORES_RE = re.compile(rf"^{_NUM}\s*(?:,\s*|\s+){_NUM}$")


def parse_scores(text: Any) -> Optional[tuple[float, float]]:
    """The two 1-10 ratings from the first non-empty line ("8 6", "8, 6", "**8 6**", "8/10 6/10").

    Returns None for anything else (a missing line, one or three numbers, words, a rating outside
    1..10), so that a bad reply becomes a retry or a missing value instead of a wrong number.
    """
    if not isinstance(text, str):
        return None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    first = first.strip().strip("*`\"'").strip().rstrip(".").strip()
    m = _SCORES_RE.match(first)
    if not m:
        return None
    a, b = float(m.group(1)), float(m.group(2))
    if not (1.0 <= a <= 10.0 and 1.0 <= b <= 10.0):
        return None
    return a, b


# ------------------------------------------------------------------------------------------------
# configuration


@dataclass
class JudgeConfig:
    """Settings of an LLM judge. The API key itself is never part of it: only the name of the
    environment variable that holds it, so that frozen configs and logs cannot leak it."""

    model: str = ""  # no default judge: which model judges changes the numbers
    base_url: Optional[str] = None  # None: the OpenAI API
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_attempts: int = 6  # requests per prompt on 429 / 5xx / timeout / connection / malformed errors
    backoff_base_s: float = 1.0  # delay before retry k is base * 2**(k-1), jittered, capped
    backoff_max_s: float = 60.0
    max_workers: int = 4
    max_calls: Optional[int] = None  # per run: HTTP requests sent (retries included)
    max_tokens: Optional[int] = None  # per run: total tokens reported by the endpoint's usage
    temperature: float = 0.0
    reply_max_tokens: int = 256
    cache_path: Optional[str] = None

    def __post_init__(self) -> None:
        def check(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"config key 'judge.{key}': {msg}")

        check(isinstance(self.api_key_env, str) and bool(self.api_key_env), "api_key_env",
              "must name an environment variable")
        check(self.timeout_s > 0, "timeout_s", f"must be > 0, got {self.timeout_s}")
        check(self.max_attempts >= 1, "max_attempts", f"must be >= 1, got {self.max_attempts}")
        check(self.backoff_base_s >= 0, "backoff_base_s", f"must be >= 0, got {self.backoff_base_s}")
        check(self.backoff_max_s >= 0, "backoff_max_s", f"must be >= 0, got {self.backoff_max_s}")
        check(self.max_workers >= 1, "max_workers", f"must be >= 1, got {self.max_workers}")
        check(self.max_calls is None or self.max_calls >= 0, "max_calls", "must be >= 0 or null")
        check(self.max_tokens is None or self.max_tokens >= 0, "max_tokens", "must be >= 0 or null")
        check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        check(self.reply_max_tokens >= 8, "reply_max_tokens", f"must be >= 8, got {self.reply_max_tokens}")


def _cfg_get(config: Any, name: str, default: Any) -> Any:
    if config is None:
        return default
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def judge_available(config: Any = None) -> tuple[bool, str]:
    """(True, description) if an LLM judge can be called with `config` (a JudgeConfig, a mapping
    or any object with the same attribute names), else (False, one line saying why)."""
    env = _cfg_get(config, "api_key_env", "OPENAI_API_KEY") or "OPENAI_API_KEY"
    base_url = _cfg_get(config, "base_url", None)
    model = _cfg_get(config, "model", "")
    try:
        import openai  # noqa: F401
    except ImportError:
        return False, "LLM judge unavailable: the 'openai' package is not installed (pip install openai)"
    has_key = bool(os.environ.get(env))
    if not has_key and not base_url:
        return False, (f"LLM judge unavailable: environment variable {env} is not set and no judge "
                       f"endpoint (judge.base_url) is configured")
    if not model:
        return False, "LLM judge unavailable: no judge model named (set judge.model)"
    where = base_url or "the OpenAI API"
    return True, f"LLM judge '{model}' at {where} (key from ${env}: {'set' if has_key else 'not set'})"


# ------------------------------------------------------------------------------------------------
# cache


@dataclass
class CachedJudgment:
    reply: str
    scores: tuple[float, float]


class JudgeCache:
    """Persistent cache of judge calls in one SQLite file.

    One row per successful call, committed in its own transaction as soon as the call returns, so
    a crash loses nothing already paid for. Unparsable replies are not stored: a rerun may get a
    usable one. One connection guarded by a lock serves all worker threads.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        self.hits = 0
        self.misses = 0
        with self._lock, self._conn:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS judgments ("
                " key TEXT PRIMARY KEY, judge_model TEXT NOT NULL, prompt_version TEXT NOT NULL,"
                " reply TEXT NOT NULL, score_1 REAL NOT NULL, score_2 REAL NOT NULL, created_at REAL NOT NULL)"
            )

    @staticmethod
    def key(judge_model: str, prompt_version: str, text: str) -> str:
        # JSON list: unambiguous boundaries between the three parts.
        blob = json.dumps([judge_model, prompt_version, text], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> Optional[CachedJudgment]:
        with self._lock:
            row = self._conn.execute("SELECT reply, score_1, score_2 FROM judgments WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return CachedJudgment(reply=row[0], scores=(float(row[1]), float(row[2])))

    def put(self, key: str, *, judge_model: str, prompt_version: str, reply: str,
            scores: tuple[float, float]) -> None:
        with self._lock, self._conn:  # `with conn` commits the transaction (or rolls it back)
            self._conn.execute(
                "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, judge_model, prompt_version, reply, float(scores[0]), float(scores[1]), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "JudgeCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------
# results


@dataclass
class ItemJudgment:
    index: int
    id: Optional[str]
    model_rating: Optional[float]  # averaged over the judged orders
    reference_rating: Optional[float]
    by_order: dict[str, Optional[dict[str, float]]]  # order -> {"model", "reference"} or None
    replies: dict[str, Optional[str]]  # order -> the judge's raw reply (None if no reply)
    missing_reason: Optional[str] = None

    @property
    def missing(self) -> bool:
        return self.missing_reason is not None


@dataclass
class JudgeResult:
    judge: str  # the judge's label: its model name, or "oracle"
    prompt_version: str
    order: str
    items: list[ItemJudgment]
    score: Optional[float]  # 100 * sum(model ratings) / sum(reference ratings); None if nothing scored
    n_items: int
    n_scored: int
    n_missing: int
    missing_reasons: dict[str, int]
    n_calls: int = 0  # HTTP requests sent, retries included
    n_cache_hits: int = 0
    n_unparsable: int = 0  # replies that parse_scores rejected (each retried once)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_used: int = 0
    disagreement_rate: Optional[float] = None  # over items judged in both orders
    n_order_pairs: int = 0  # items the disagreement rate is computed over

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        s = "n/a" if self.score is None else f"{self.score:.2f}"
        d = "n/a" if self.disagreement_rate is None else f"{self.disagreement_rate:.3f}"
        return (f"judge={self.judge} score={s} scored={self.n_scored}/{self.n_items} missing={self.n_missing} "
                f"calls={self.n_calls} cache_hits={self.n_cache_hits} tokens={self.tokens_used} order_disagreement={d}")


_ITEM_FIELDS = ("instruction", "reference", "response")


def _item_fields(item: Any, index: int) -> dict[str, Any]:
    get = (lambda k, d=None: item.get(k, d)) if isinstance(item, Mapping) else (lambda k, d=None: getattr(item, k, d))
    out = {}
    for k in _ITEM_FIELDS:
        v = get(k)
        if not isinstance(v, str):
            raise ValueError(f"judge item {index}: field '{k}' must be a string, got {type(v).__name__} "
                             f"(items need instruction, input, reference, response)")
        out[k] = v
    inp = get("input", "") or ""
    if not isinstance(inp, str):
        raise ValueError(f"judge item {index}: field 'input' must be a string, got {type(inp).__name__}")
    out["input"] = inp
    ident = get("id")
    out["id"] = None if ident is None else str(ident)
    return out


def _orders_for(order: str) -> tuple[str, ...]:
    if order == "both":
        return ORDERS
    if order in ORDERS:
        return (order,)
    raise ValueError(f"judge order '{order}' is not one of both, {', '.join(ORDERS)}")


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _assemble(label: str, order: str, orders: tuple[str, ...], fields: list[dict[str, Any]],
              slots: dict[tuple[int, str], tuple[Optional[tuple[float, float]], Optional[str], Optional[str]]],
              **counters: Any) -> JudgeResult:
    """Combine per-(item, order) outcomes: slots[(i, o)] = ((model, reference) | None, reply, reason)."""
    items: list[ItemJudgment] = []
    sum_model = sum_ref = 0.0
    reasons: Counter = Counter()
    n_pairs = n_flips = 0
    for i, f in enumerate(fields):
        by_order: dict[str, Optional[dict[str, float]]] = {}
        replies: dict[str, Optional[str]] = {}
        reason = None
        for o in orders:
            ratings, reply, why = slots[(i, o)]
            replies[o] = reply
            by_order[o] = None if ratings is None else {"model": ratings[0], "reference": ratings[1]}
            if ratings is None and reason is None:
                reason = why or "unknown"
        # An item counts only when every requested order was judged: averaging over whichever
        # order happened to succeed would bring back the position bias that both orders remove.
        if reason is None:
            m = sum(by_order[o]["model"] for o in orders) / len(orders)
            r = sum(by_order[o]["reference"] for o in orders) / len(orders)
            sum_model += m
            sum_ref += r
            if len(orders) == 2:
                prefs = [_sign(by_order[o]["model"] - by_order[o]["reference"]) for o in orders]
                n_pairs += 1
                n_flips += prefs[0] != prefs[1]  # a tie is its own outcome
        else:
            m = r = None
            reasons[reason] += 1
        items.append(ItemJudgment(index=i, id=f["id"], model_rating=m, reference_rating=r,
                                  by_order=by_order, replies=replies, missing_reason=reason))
    n_scored = sum(1 for it in items if not it.missing)
    return JudgeResult(
        judge=label, prompt_version=counters.pop("prompt_version", JUDGE_PROMPT_VERSION), order=order,
        items=items,
        score=(100.0 * sum_model / sum_ref) if n_scored and sum_ref > 0 else None,
        n_items=len(items), n_scored=n_scored, n_missing=len(items) - n_scored, missing_reasons=dict(reasons),
        disagreement_rate=(n_flips / n_pairs) if n_pairs else None, n_order_pairs=n_pairs,
        **counters,
    )


# ------------------------------------------------------------------------------------------------
# the API judge


class _RunState:
    """Counters and budget of one judge_pairs run, shared by its worker threads."""

    def __init__(self, max_calls: Optional[int], max_tokens: Optional[int]):
        self.lock = threading.Lock()
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.n_calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.total_tokens = 0
        self.n_unparsable = 0
        self.fatal: Optional[str] = None  # set on errors that every further call would repeat

    def reserve_call(self) -> bool:
        # Tokens are known only after a reply, so with several workers the token budget can be
        # overshot by at most max_workers calls; the call budget is exact.
        with self.lock:
            if self.max_calls is not None and self.n_calls >= self.max_calls:
                return False
            if self.max_tokens is not None and self.total_tokens >= self.max_tokens:
                return False
            self.n_calls += 1
            return True

    def add_usage(self, usage: Any) -> None:
        if usage is None:
            return
        p = int(getattr(usage, "prompt_tokens", 0) or 0)
        c = int(getattr(usage, "completion_tokens", 0) or 0)
        t = int(getattr(usage, "total_tokens", 0) or 0) or p + c
        with self.lock:
            self.prompt_tokens += p
            self.completion_tokens += c
            self.total_tokens += t


class _Malformed(Exception):
    """The endpoint answered 200 with a body that is not a usable chat completion."""


def _extract(resp: Any) -> tuple[str, Any]:
    try:
        content = resp.choices[0].message.content
    except (AttributeError, IndexError, TypeError, KeyError) as e:
        raise _Malformed(f"no choices[0].message.content in reply ({type(e).__name__})") from None
    return (content if isinstance(content, str) else ""), getattr(resp, "usage", None)


_RETRY_STATUS = {408, 409, 425, 429}
_FATAL_STATUS = {401, 403, 404}  # bad key, no access, wrong model/URL: every later call would fail too


class JudgeClient:
    """LLM judge over an OpenAI-compatible chat-completions endpoint.

    `JudgeClient(JudgeConfig(model=..., base_url=...), cache=path_or_JudgeCache)`, or the config
    fields as keyword arguments. The API key is read from the environment variable
    `config.api_key_env` and handed to the openai client only.
    """

    def __init__(self, config: Optional[JudgeConfig] = None, *, cache: "JudgeCache | str | os.PathLike | None" = None,
                 sleep: Callable[[float], None] = time.sleep, **overrides: Any):
        cfg = config or JudgeConfig()
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        self.config = cfg
        if not cfg.model:
            raise ConfigError("config key 'judge.model': no judge model named")
        ok, reason = judge_available(cfg)
        if not ok:
            raise ConfigError(reason)
        import openai

        self._openai = openai
        key = os.environ.get(cfg.api_key_env)
        # Local OpenAI-compatible servers usually ignore auth, but the client insists on a value.
        self._client = openai.OpenAI(base_url=cfg.base_url, api_key=key or "no-key",
                                     timeout=cfg.timeout_s, max_retries=0)  # retries are ours
        del key
        self._owns_cache = False
        if cache is None and cfg.cache_path:
            cache = cfg.cache_path
        if cache is not None and not isinstance(cache, JudgeCache):
            cache = JudgeCache(cache)
            self._owns_cache = True
        self.cache: Optional[JudgeCache] = cache
        self._sleep = sleep
        self._rng = random.Random()

    @property
    def label(self) -> str:
        return self.config.model

    def __repr__(self) -> str:  # never shows the key: the config holds only the variable's name
        return f"JudgeClient(model={self.config.model!r}, base_url={self.config.base_url!r})"

    def close(self) -> None:
        if self._owns_cache and self.cache is not None:
            self.cache.close()
        self._client.close()

    def __enter__(self) -> "JudgeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one prompt ---------------------------------------------------------------------------

    def _backoff(self, attempt: int, err: Exception) -> float:
        cfg = self.config
        delay = min(cfg.backoff_base_s * (2 ** (attempt - 1)), cfg.backoff_max_s)
        delay *= 0.5 + 0.5 * self._rng.random()  # jitter so that workers do not retry in lockstep
        resp = getattr(err, "response", None)
        retry_after = None
        try:
            retry_after = float(resp.headers.get("retry-after")) if resp is not None else None
        except (TypeError, ValueError, AttributeError):
            retry_after = None
        if retry_after is not None and math.isfinite(retry_after):
            delay = max(delay, min(retry_after, cfg.backoff_max_s))
        return delay

    def _call_once(self, system: str, user: str) -> tuple[str, Any]:
        resp = self._client.chat.completions.create(
            model=self.config.model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            temperature=self.config.temperature,
            max_tokens=self.config.reply_max_tokens,
        )
        return _extract(resp)

    def _judge_prompt(self, key: str, system: str, user: str, state: _RunState
                      ) -> tuple[Optional[tuple[float, float]], Optional[str], Optional[str]]:
        """(scores, reply, missing_reason) for one rendered prompt; never raises."""
        openai = self._openai
        failures = 0
        bad_replies = 0
        last_reply: Optional[str] = None
        while True:
            if state.fatal:
                return None, last_reply, state.fatal
            if not state.reserve_call():
                return None, last_reply, "budget"
            try:
                reply, usage = self._call_once(system, user)
            except openai.APIStatusError as e:
                status = int(getattr(e, "status_code", 0) or 0)
                if status in _FATAL_STATUS:
                    with state.lock:
                        state.fatal = state.fatal or f"http {status} ({type(e).__name__})"
                    log.error("judge endpoint answered HTTP %d (%s); stopping this run's calls", status, type(e).__name__)
                    return None, None, state.fatal
                if status not in _RETRY_STATUS and status < 500:
                    return None, None, f"http {status}"
                err: Exception = e
                what = f"http {status}"
            except openai.APIConnectionError as e:  # includes APITimeoutError
                err, what = e, ("timeout" if isinstance(e, openai.APITimeoutError) else "connection error")
            except (openai.APIResponseValidationError, _Malformed, ValueError) as e:  # ValueError: bad JSON body
                err, what = e, "malformed response"
            except Exception as e:  # anything else: record, do not crash a paid run
                log.warning("judge call failed unexpectedly: %s", type(e).__name__, exc_info=True)
                return None, None, f"error: {type(e).__name__}"
            else:
                state.add_usage(usage)
                last_reply = reply
                scores = parse_scores(reply)
                if scores is not None:
                    if self.cache is not None:
                        self.cache.put(key, judge_model=self.config.model, prompt_version=JUDGE_PROMPT_VERSION,
                                       reply=reply, scores=scores)
                    return scores, reply, None
                with state.lock:
                    state.n_unparsable += 1
                bad_replies += 1
                if bad_replies >= 2:  # retried once already
                    return None, reply, "unparsable"
                continue
            failures += 1
            if failures >= self.config.max_attempts:
                return None, last_reply, f"{what} after {failures} attempts"
            delay = self._backoff(failures, err)
            log.info("judge call: %s; retry %d/%d in %.2fs", what, failures, self.config.max_attempts - 1, delay)
            self._sleep(delay)

    # -- many pairs ---------------------------------------------------------------------------

    def judge_pairs(self, items: list[Any], order: str = "both", progress: bool = False) -> JudgeResult:
        """Rate each item's response against its reference; see the module docstring."""
        orders = _orders_for(order)
        fields = [_item_fields(it, i) for i, it in enumerate(items)]
        state = _RunState(self.config.max_calls, self.config.max_tokens)

        prompts: dict[str, tuple[str, str]] = {}
        slot_key: dict[tuple[int, str], str] = {}
        for i, f in enumerate(fields):
            for o in orders:
                a1, a2 = (f["response"], f["reference"]) if o == "model_first" else (f["reference"], f["response"])
                system, user = render_judge_prompt(f["instruction"], f["input"], a1, a2)
                k = JudgeCache.key(self.config.model, JUDGE_PROMPT_VERSION, prompt_text(system, user))
                slot_key[(i, o)] = k
                prompts.setdefault(k, (system, user))  # identical prompts are judged once

        outcomes: dict[str, tuple[Optional[tuple[float, float]], Optional[str], Optional[str]]] = {}
        n_hits = 0
        if self.cache is not None:
            for k in prompts:
                hit = self.cache.get(k)
                if hit is not None:
                    outcomes[k] = (hit.scores, hit.reply, None)
                    n_hits += 1
        todo = [k for k in prompts if k not in outcomes]

        bar = None
        if progress and todo:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(todo), desc=f"judge {self.config.model}", unit="call")
            except ImportError:
                bar = None
        if todo:
            with ThreadPoolExecutor(max_workers=self.config.max_workers, thread_name_prefix="judge") as pool:
                futures = {pool.submit(self._judge_prompt, k, *prompts[k], state): k for k in todo}
                for fut in as_completed(futures):
                    outcomes[futures[fut]] = fut.result()
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()

        slots = {}
        for (i, o), k in slot_key.items():
            scores, reply, reason = outcomes[k]
            if scores is not None:
                # Map "Assistant 1 / Assistant 2" back to (model, reference).
                scores = scores if o == "model_first" else (scores[1], scores[0])
            slots[(i, o)] = (scores, reply, reason)
        result = _assemble(self.label, order, orders, fields, slots,
                           n_calls=state.n_calls, n_cache_hits=n_hits, n_unparsable=state.n_unparsable,
                           prompt_tokens=state.prompt_tokens, completion_tokens=state.completion_tokens,
                           tokens_used=state.total_tokens)
        log.info("%s", result.summary())
        return result


# ------------------------------------------------------------------------------------------------
# the exact judge of the toy world


class OracleJudge:
    """Rates responses with an exact checker instead of an LLM: same 1-10 scale, no network.

    `check(item) -> {'valid': bool, 'score'?: float in [0, 1], ...}`. A 'score' gives partial
    credit 1 + 9 * score; otherwise valid -> 10 and invalid -> 1. The reference is rated 10.
    """

    label = "oracle"

    def __init__(self, check: Callable[[Any], Mapping[str, Any]]):
        if not callable(check):
            raise TypeError("OracleJudge needs a callable check(item) -> {'valid': bool, ...}")
        self.check = check

    def rate(self, item: Any) -> float:
        verdict = self.check(item)
        if not isinstance(verdict, Mapping) or "valid" not in verdict:
            raise ValueError(f"OracleJudge: check(item) must return a dict with key 'valid', got {verdict!r}")
        if verdict.get("score") is not None:
            s = float(verdict["score"])
            if not (0.0 <= s <= 1.0) or math.isnan(s):
                raise ValueError(f"OracleJudge: check(item)['score'] must be in [0, 1], got {verdict['score']!r}")
            return 1.0 + 9.0 * s
        return 10.0 if verdict["valid"] else 1.0

    def judge_pairs(self, items: list[Any], order: str = "both", progress: bool = False) -> JudgeResult:
        orders = _orders_for(order)
        fields = [_item_fields(it, i) for i, it in enumerate(items)]
        slots = {}
        for i, it in enumerate(items):
            rating = self.rate(it)
            for o in orders:  # an exact checker has no position bias: both orders agree
                slots[(i, o)] = ((rating, 10.0), None, None)
        return _assemble(self.label, order, orders, fields, slots, prompt_version="oracle")
