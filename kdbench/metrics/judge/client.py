"""The API judge: the `openai` client against any OpenAI-compatible endpoint, with our own retry
loop, bounded concurrency, a per-run call/token budget and the SQLite cache. Never raises on a bad
reply or a failed call: that pair is recorded as missing, with a reason."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Optional

from ...errors import ConfigError
from .cache import JudgeCache
from .config import JudgeConfig, judge_available
from .prompt import JUDGE_PROMPT_VERSION, parse_scores, prompt_text, render_judge_prompt
from .result import JudgeResult, assemble, item_fields, orders_for

log = logging.getLogger("kdbench.judge")

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
        orders = orders_for(order)
        fields = [item_fields(it, i) for i, it in enumerate(items)]
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
        result = assemble(self.label, order, orders, fields, slots,
                           n_calls=state.n_calls, n_cache_hits=n_hits, n_unparsable=state.n_unparsable,
                           prompt_tokens=state.prompt_tokens, completion_tokens=state.completion_tokens,
                           tokens_used=state.total_tokens)
        log.info("%s", result.summary())
        return result
