"""Judge results: per-item judgments and their assembly into a score (shared by the API judge and
the oracle)."""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .prompt import JUDGE_PROMPT_VERSION, ORDERS


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

    @property
    def order_flip(self) -> Optional[bool]:
        """Whether the two presentation orders prefer different answers (a tie is its own outcome);
        None unless the item was judged in both orders."""
        if self.missing or len(self.by_order) != 2:
            return None
        prefs = [_sign(self.by_order[o]["model"] - self.by_order[o]["reference"]) for o in ORDERS]
        return prefs[0] != prefs[1]


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


def item_fields(item: Any, index: int) -> dict[str, Any]:
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


def orders_for(order: str) -> tuple[str, ...]:
    if order == "both":
        return ORDERS
    if order in ORDERS:
        return (order,)
    raise ValueError(f"judge order '{order}' is not one of both, {', '.join(ORDERS)}")


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def assemble(label: str, order: str, orders: tuple[str, ...], fields: list[dict[str, Any]],
              slots: dict[tuple[int, str], tuple[Optional[tuple[float, float]], Optional[str], Optional[str]]],
              **counters: Any) -> JudgeResult:
    """Combine per-(item, order) outcomes: slots[(i, o)] = ((model, reference) | None, reply, reason)."""
    items: list[ItemJudgment] = []
    reasons: Counter = Counter()
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
        else:
            m = r = None
            reasons[reason] += 1
        items.append(ItemJudgment(index=i, id=f["id"], model_rating=m, reference_rating=r,
                                  by_order=by_order, replies=replies, missing_reason=reason))
    scored = [it for it in items if not it.missing]
    flips = [it.order_flip for it in items if it.order_flip is not None]
    return JudgeResult(
        judge=label, prompt_version=counters.pop("prompt_version", JUDGE_PROMPT_VERSION), order=order,
        items=items,
        score=ratio_score([it.model_rating for it in scored], [it.reference_rating for it in scored]),
        n_items=len(items), n_scored=len(scored), n_missing=len(items) - len(scored), missing_reasons=dict(reasons),
        disagreement_rate=(sum(flips) / len(flips)) if flips else None, n_order_pairs=len(flips),
        **counters,
    )


def ratio_score(model: list[float], reference: list[float]) -> Optional[float]:
    """100 * sum(model ratings) / sum(reference ratings) over the scored items (None when nothing
    was scored); the one reduction behind a judge score and its recompute from per-example rows."""
    sum_model = sum_ref = 0.0
    for m, r in zip(model, reference):
        sum_model += m
        sum_ref += r
    return (100.0 * sum_model / sum_ref) if model and sum_ref > 0 else None
