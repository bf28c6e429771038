"""The judge prompt (ours, versioned: the paper's was never published) and the strict reader of
the two ratings on its reply's first line."""
from __future__ import annotations

import re
from typing import Any, Optional

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
