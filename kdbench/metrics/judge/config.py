"""Judge settings: `JudgeConfig` (an LLM judge's endpoint, retries, budget), `judge_available`
(whether a judge can run, and why not) and `judge_settings` (BenchConfig.judge -> backend, config,
order; validated offline, so a runner can call it while checking the configuration)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ...errors import ConfigError
from ...registry import suggest
from .prompt import ORDERS

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


BACKENDS = ("auto", "oracle", "openai")
ORDER_CHOICES = ("both",) + ORDERS
_CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(JudgeConfig))


def judge_settings(raw: Optional[dict]) -> tuple[str, JudgeConfig, str]:
    """(backend, JudgeConfig, order) from BenchConfig.judge; ConfigError names a bad key or value."""
    raw = dict(raw or {})
    backend = raw.pop("backend", "auto") or "auto"
    order = raw.pop("order", "both") or "both"
    if backend not in BACKENDS:
        raise ConfigError(f"config key 'judge.backend': '{backend}' is not one of {', '.join(BACKENDS)}."
                          + suggest(str(backend), list(BACKENDS)))
    if order not in ORDER_CHOICES:
        raise ConfigError(f"config key 'judge.order': '{order}' is not one of {', '.join(ORDER_CHOICES)}")
    valid = list(_CONFIG_KEYS) + ["backend", "order"]
    for k in raw:
        if k not in _CONFIG_KEYS:
            raise ConfigError(f"config key 'judge.{k}' is unknown; valid keys: {', '.join(valid)}." + suggest(k, valid))
    return backend, JudgeConfig(**raw), order
