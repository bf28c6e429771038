"""LLM-judge feedback ("GPT-4 score" in MiniLLM), usable standalone, and the `judge` metric.

MiniLLM asks GPT-4 to rate the model's answer and the golden answer 1-10 (helpfulness, relevance,
accuracy, level of detail) and reports 100 * sum(model ratings) / sum(golden ratings). The paper's
prompt was never published, so the prompt is ours and is versioned: a number is only comparable
with numbers made under the same `JUDGE_PROMPT_VERSION` and judge model.

Modules:
- `prompt`: `render_judge_prompt` / `parse_scores`, the prompt and the strict reader of its first line.
- `config`: `JudgeConfig`, `judge_available` (whether a judge can run, and why not), `judge_settings`.
- `cache`: `JudgeCache`, SQLite, one row per paid call, keyed by sha256(judge model, prompt version, prompt).
- `client`: `JudgeClient`, the `openai` client against any OpenAI-compatible endpoint, with our own
  retry loop, bounded concurrency, a per-run call/token budget, and the cache. Never raises on a
  bad reply or a failed call: that pair is recorded as missing, with a reason.
- `oracle`: `OracleJudge`, the same interface, rating from an exact checker (the toy world), no network.
- `result`: `ItemJudgment` / `JudgeResult` and their assembly into a score.
- `metric`: the registered `judge` metric and its run-scoped state (`JudgeRuns`).

Each pair is judged in both presentation orders by default (LLM judges favour one position); the
two ratings of each answer are averaged, and the order-disagreement rate is reported.
"""
from .cache import CachedJudgment, JudgeCache  # noqa: F401
from .client import JudgeClient  # noqa: F401
from .config import BACKENDS, JudgeConfig, judge_available, judge_settings  # noqa: F401
from .metric import JudgeRuns, reset_judge_runs  # noqa: F401  (importing it registers the metric)
from .oracle import OracleJudge  # noqa: F401
from .prompt import (  # noqa: F401
    JUDGE_PROMPT_VERSION,
    JUDGE_SYSTEM_PROMPT,
    ORDERS,
    judge_prompt_template,
    parse_scores,
    prompt_text,
    render_judge_prompt,
)
from .result import ItemJudgment, JudgeResult, ratio_score  # noqa: F401
