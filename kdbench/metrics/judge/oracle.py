"""The exact judge of the toy world: the LLM judge's interface, rated by the task's checker."""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from .result import JudgeResult, assemble, item_fields, orders_for

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
        orders = orders_for(order)
        fields = [item_fields(it, i) for i, it in enumerate(items)]
        slots = {}
        for i, it in enumerate(items):
            rating = self.rate(it)
            for o in orders:  # an exact checker has no position bias: both orders agree
                slots[(i, o)] = ((rating, 10.0), None, None)
        return assemble(self.label, order, orders, fields, slots, prompt_version="oracle")
