"""The LLM judge against a real local HTTP server speaking the OpenAI chat-completions protocol.

The server (ours, below) runs on 127.0.0.1 in a background thread and is scripted per test with a
queue of behaviours (reply text, HTTP status, sleep, broken body); when the queue is empty it
rates answers from a table, optionally with a bias towards the first position. JudgeClient talks
to it through the real `openai` client. Nothing here reaches beyond 127.0.0.1.
"""
from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kdbench.errors import ConfigError
from kdbench.metrics.judge import (
    JUDGE_PROMPT_VERSION,
    JudgeCache,
    JudgeClient,
    JudgeConfig,
    OracleJudge,
    judge_available,
    parse_scores,
    prompt_text,
    render_judge_prompt,
)

SECRET = "sk-test-DO-NOT-LEAK-7f3a9c2e51"
KEY_ENV = "KDBENCH_TEST_JUDGE_KEY"
from fake_openai import USAGE, FakeOpenAI, _A1, _A2  # noqa: E402,F401



@pytest.fixture
def fake(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv(KEY_ENV, SECRET)
    srv = FakeOpenAI()
    yield srv
    srv.close()


def make_client(fake, cache=None, **kw) -> JudgeClient:
    cfg = dict(model="fake-judge", base_url=fake.base_url, api_key_env=KEY_ENV, timeout_s=2.0, max_attempts=4,
               backoff_base_s=0.001, backoff_max_s=0.005, max_workers=2)
    cfg.update(kw)
    return JudgeClient(JudgeConfig(**cfg), cache=cache)


def items_from(pairs, fake):
    """pairs: [(model_rating, reference_rating)] -> items whose answers the server rates so."""
    out = []
    for i, (m, r) in enumerate(pairs):
        resp, ref = f"model answer {i}", f"reference answer {i}"
        fake.ratings[resp], fake.ratings[ref] = m, r
        out.append({"id": f"ex{i}", "instruction": f"Do task {i}.", "input": "" if i % 2 else f"context {i}",
                    "reference": ref, "response": resp})
    return out


# ------------------------------------------------------------------------------------------------
# prompt and parsing


def test_parse_scores():
    assert parse_scores("8 6") == (8.0, 6.0)
    assert parse_scores("8 6\nbecause ...") == (8.0, 6.0)
    assert parse_scores("\n  **7, 9**  \nwhy") == (7.0, 9.0)
    assert parse_scores("8/10 6/10") == (8.0, 6.0)
    assert parse_scores("7.5 10") == (7.5, 10.0)
    for bad in ("", "8", "8 6 7", "Assistant 1: 8, Assistant 2: 6", "eleven two", "11 5", "0 7", "8 -1",
                "explanation first\n8 6", None, 86):
        assert parse_scores(bad) is None, bad


def test_render_prompt():
    system, user = render_judge_prompt("Name a colour.", "Think of the sky.", "ANSWER-ONE", "ANSWER-TWO")
    assert JUDGE_PROMPT_VERSION and system
    assert "Name a colour." in user and "Think of the sky." in user
    assert user.index("ANSWER-ONE") < user.index("ANSWER-TWO")
    for word in ("helpfulness", "relevance", "accuracy", "level of detail", "1 to 10", "first line"):
        assert word in user
    _, no_input = render_judge_prompt("Name a colour.", "", "blue", "red")
    assert "[Input]" not in no_input and "[Input]" in user


# ------------------------------------------------------------------------------------------------
# scoring


def test_normal_scoring_and_formula(fake):
    items = items_from([(6, 8), (4, 8), (9, 6)], fake)
    with make_client(fake) as judge:
        res = judge.judge_pairs(items, order="model_first")
    assert res.score == pytest.approx(100 * (6 + 4 + 9) / (8 + 8 + 6))
    assert [(it.model_rating, it.reference_rating) for it in res.items] == [(6, 8), (4, 8), (9, 6)]
    assert [it.id for it in res.items] == ["ex0", "ex1", "ex2"]
    assert res.n_missing == 0 and res.n_scored == 3 and res.n_calls == 3 and fake.n_requests == 3
    assert res.tokens_used == 3 * 60 and res.prompt_tokens == 150 and res.completion_tokens == 30
    assert res.disagreement_rate is None  # one order only
    body = fake.requests[0]
    assert body["model"] == "fake-judge" and body["temperature"] == 0.0
    assert all(a == f"Bearer {SECRET}" for a in fake.auth)  # the key reaches the endpoint, and only there
    json.dumps(res.to_dict())  # the result is JSON-able


def test_both_orders_averaged_and_disagreement(fake):
    fake.first_position_bonus = 2  # a position-biased judge
    # (model, ref) true ratings; judged (model-first) / (reference-first) as (model, ref):
    # A 6,6 -> (8,6) model / (6,8) ref  -> flip;  avg 7, 7
    # B 3,9 -> (5,9) ref   / (3,10) ref -> same;  avg 4, 9.5
    # C 7,8 -> (9,8) model / (7,10) ref -> flip;  avg 8, 9
    # D 5,7 -> (7,7) tie   / (5,9) ref  -> flip (a tie is its own outcome); avg 6, 8
    items = items_from([(6, 6), (3, 9), (7, 8), (5, 7)], fake)
    with make_client(fake) as judge:
        res = judge.judge_pairs(items)  # order="both" by default
    assert res.order == "both" and res.n_calls == 8
    assert [(it.model_rating, it.reference_rating) for it in res.items] == [(7, 7), (4, 9.5), (8, 9), (6, 8)]
    assert res.items[2].by_order == {"model_first": {"model": 9, "reference": 8},
                                     "reference_first": {"model": 7, "reference": 10}}
    assert res.disagreement_rate == pytest.approx(3 / 4) and res.n_order_pairs == 4
    assert res.score == pytest.approx(100 * (7 + 4 + 8 + 6) / (7 + 9.5 + 9 + 8))


# ------------------------------------------------------------------------------------------------
# transport failures


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_status_then_success(fake, status):
    items = items_from([(7, 8)], fake)
    fake.script({"status": status})
    with make_client(fake) as judge:
        res = judge.judge_pairs(items, order="model_first")
    assert res.n_missing == 0 and res.items[0].model_rating == 7
    assert res.n_calls == 2 and fake.n_requests == 2


def test_persistent_500_is_missing_not_crash(fake):
    items = items_from([(7, 8), (5, 5)], fake)
    fake.script(*[{"status": 500}] * 4)  # max_attempts=4, one worker: all for the first item
    with make_client(fake, max_workers=1) as judge:
        res = judge.judge_pairs(items, order="model_first")
    assert res.items[0].missing and "http 500" in res.items[0].missing_reason
    assert "4 attempts" in res.items[0].missing_reason
    assert not res.items[1].missing
    assert res.n_missing == 1 and res.n_calls == 5
    assert res.score == pytest.approx(100.0)  # only the scored item counts


def test_fatal_401_stops_run(fake):
    items = items_from([(7, 8), (5, 5), (6, 6)], fake)
    fake.script({"status": 401})
    with make_client(fake, max_workers=1) as judge:
        res = judge.judge_pairs(items, order="model_first")
    assert res.n_missing == 3 and res.score is None
    assert all("http 401" in it.missing_reason for it in res.items)
    assert fake.n_requests == 1


def test_timeout_then_success(fake):
    items = items_from([(7, 8)], fake)
    fake.script({"sleep": 0.8, "text": "1 1"})  # answered after the client gave up
    with make_client(fake, timeout_s=0.25) as judge:
        res = judge.judge_pairs(items, order="model_first")
    assert res.n_missing == 0 and (res.items[0].model_rating, res.items[0].reference_rating) == (7, 8)
    assert res.n_calls == 2


@pytest.mark.parametrize("raw", [b'{"id": "x", "choices": [ {"index": 0, "mess',  # cut-off JSON
                                 b'<html>502 bad gateway</html>',
                                 b'{"id": "x", "object": "chat.completion"}'])  # JSON without choices
def test_malformed_body_then_success(fake, raw):
    items = items_from([(7, 8)], fake)
    fake.script({"raw": raw})
    with make_client(fake) as judge:
        res = judge.judge_pairs(items, order="model_first")
    assert res.n_missing == 0 and res.items[0].model_rating == 7
    assert res.n_calls == 2


def test_malformed_body_persistent_is_missing(fake):
    items = items_from([(7, 8)], fake)
    fake.script(*[{"raw": b"not json"}] * 4)
    with make_client(fake) as judge:
        res = judge.judge_pairs(items, order="model_first")
    assert res.n_missing == 1 and "malformed" in res.items[0].missing_reason


# ------------------------------------------------------------------------------------------------
# bad replies


def test_garbage_reply_retried_once_then_missing(fake):
    items = items_from([(7, 8), (6, 6)], fake)
    fake.script({"text": "Both answers are fine."}, {"text": "Assistant 1 is better."})
    with make_client(fake, max_workers=1) as judge:
        res = judge.judge_pairs(items, order="model_first")
    assert res.items[0].missing_reason == "unparsable"
    assert res.items[0].replies["model_first"] == "Assistant 1 is better."
    assert not res.items[1].missing
    assert res.n_unparsable == 2 and res.n_calls == 3 and res.missing_reasons == {"unparsable": 1}


def test_garbage_once_then_good(fake):
    items = items_from([(7, 8)], fake)
    fake.script({"text": "I cannot decide."})
    with make_client(fake) as judge:
        res = judge.judge_pairs(items, order="model_first")
    assert res.n_missing == 0 and res.n_unparsable == 1 and res.n_calls == 2


def test_out_of_range_rating_is_missing(fake, tmp_path):
    items = items_from([(7, 8)], fake)
    fake.script({"text": "11 5"}, {"text": "0 7"})
    with make_client(fake, cache=tmp_path / "c.sqlite") as judge:
        res = judge.judge_pairs(items, order="model_first")
        assert res.items[0].missing_reason == "unparsable" and res.n_calls == 2
        assert len(judge.cache) == 0  # bad replies are not cached: a rerun may do better
        again = judge.judge_pairs(items, order="model_first")
    assert again.n_missing == 0 and again.items[0].model_rating == 7


# ------------------------------------------------------------------------------------------------
# budget and concurrency


def test_call_budget(fake, tmp_path):
    items = items_from([(7, 8)] * 1 + [(5, 6), (4, 4), (9, 9), (2, 3)], fake)
    path = tmp_path / "c.sqlite"
    with make_client(fake, cache=path, max_calls=3, max_workers=1) as judge:
        res = judge.judge_pairs(items, order="model_first")
        assert res.n_calls == 3 and fake.n_requests == 3
        assert res.n_scored == 3 and res.n_missing == 2 and res.missing_reasons == {"budget": 2}
        # each paid call is already committed: visible from an independent connection
        with sqlite3.connect(path) as other:
            assert other.execute("SELECT COUNT(*) FROM judgments").fetchone()[0] == 3
        # the budget is per run: a second run finishes the job from the cache plus two calls
        res2 = judge.judge_pairs(items, order="model_first")
    assert res2.n_missing == 0 and res2.n_cache_hits == 3 and res2.n_calls == 2


def test_token_budget(fake):
    items = items_from([(7, 8), (5, 6), (4, 4), (9, 9), (2, 3)], fake)
    # 60 tokens a call; calls start while used < 150: at 0, 60, 120 -> three calls
    with make_client(fake, max_tokens=150, max_workers=1) as judge:
        res = judge.judge_pairs(items, order="model_first")
    assert res.n_calls == 3 and res.tokens_used == 180
    assert res.missing_reasons == {"budget": 2}


def test_concurrency_bound(fake, tmp_path):
    fake.delay = 0.15
    items = items_from([(i % 9 + 1, 5) for i in range(8)], fake)
    with make_client(fake, cache=tmp_path / "c.sqlite", max_workers=2) as judge:
        t0 = time.monotonic()
        res = judge.judge_pairs(items, order="model_first")
        elapsed = time.monotonic() - t0
        assert len(judge.cache) == 8  # concurrent writers all landed
    assert res.n_missing == 0 and fake.n_requests == 8
    assert fake.max_in_flight == 2  # bounded, and actually concurrent
    assert elapsed < 8 * 0.15  # faster than serial


# ------------------------------------------------------------------------------------------------
# cache and key hygiene


def test_cache_second_run_and_reopen_make_no_calls(fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="kdbench.judge")
    fake.first_position_bonus = 1
    items = items_from([(6, 8), (4, 8), (9, 6)], fake)
    path = tmp_path / "judge_cache.sqlite"
    with make_client(fake, cache=path) as judge:
        first = judge.judge_pairs(items)
        assert fake.n_requests == 6 and first.n_cache_hits == 0
        second = judge.judge_pairs(items)
    assert fake.n_requests == 6 and second.n_calls == 0 and second.n_cache_hits == 6
    assert second.score == first.score and second.disagreement_rate == first.disagreement_rate

    # a new process: fresh JudgeCache on the same file, fresh client
    with JudgeCache(path) as cache:
        assert len(cache) == 6
        third = make_client(fake, cache=cache).judge_pairs(items)
        assert cache.hits == 6
    assert fake.n_requests == 6 and third.n_calls == 0 and third.score == first.score

    # another judge model is another key
    with make_client(fake, cache=path, model="other-judge") as judge:
        judge.judge_pairs(items[:1], order="model_first")
    assert fake.n_requests == 7

    # the key is nowhere on disk, in results, logs or reprs
    blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert blobs and SECRET.encode() not in blobs
    assert SECRET not in json.dumps(first.to_dict())
    assert SECRET not in caplog.text
    assert SECRET not in repr(make_client(fake)) and SECRET not in repr(JudgeConfig())


def test_cache_key_parts():
    s, u = render_judge_prompt("i", "", "a", "b")
    k = JudgeCache.key("m", JUDGE_PROMPT_VERSION, prompt_text(s, u))
    assert len(k) == 64
    assert k != JudgeCache.key("m2", JUDGE_PROMPT_VERSION, prompt_text(s, u))
    assert k != JudgeCache.key("m", JUDGE_PROMPT_VERSION + "x", prompt_text(s, u))
    assert k != JudgeCache.key("m", JUDGE_PROMPT_VERSION, prompt_text(*render_judge_prompt("i", "", "b", "a")))


# ------------------------------------------------------------------------------------------------
# availability, oracle


def test_judge_available(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)
    ok, reason = judge_available(JudgeConfig(model="gpt-4"))
    assert not ok and "OPENAI_API_KEY" in reason and "base_url" in reason and "\n" not in reason
    assert judge_available({"model": "gpt-4"})[0] is False
    assert judge_available(None)[0] is False
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        JudgeClient(JudgeConfig(model="gpt-4"))
    # an endpoint alone is enough (local servers need no key); a key alone means the OpenAI API
    assert judge_available({"model": "m", "base_url": "http://127.0.0.1:9/v1"})[0] is True
    monkeypatch.setenv(KEY_ENV, SECRET)
    ok, reason = judge_available(JudgeConfig(model="m", api_key_env=KEY_ENV))
    assert ok and SECRET not in reason
    ok, reason = judge_available(JudgeConfig(api_key_env=KEY_ENV))
    assert not ok and "judge.model" in reason


def test_config_validation():
    with pytest.raises(ConfigError, match="judge.max_workers"):
        JudgeConfig(model="m", max_workers=0)
    with pytest.raises(ValueError, match="order"):
        OracleJudge(lambda it: {"valid": True}).judge_pairs([], order="sideways")


def test_oracle_judge():
    def check(item):
        return {"valid": item["response"] == "ok", **({"score": item["partial"]} if "partial" in item else {})}

    items = [{"instruction": "i", "input": "", "reference": "ok", "response": "ok"},
             {"instruction": "i", "input": "", "reference": "ok", "response": "bad"},
             {"instruction": "i", "input": "", "reference": "ok", "response": "half", "partial": 0.5}]
    judge = OracleJudge(check)
    res = judge.judge_pairs(items)
    assert judge.label == "oracle" and res.judge == "oracle"
    assert [it.model_rating for it in res.items] == [10.0, 1.0, 5.5]
    assert all(it.reference_rating == 10.0 for it in res.items)
    assert res.score == pytest.approx(100 * 16.5 / 30)
    assert res.disagreement_rate == 0.0 and res.n_calls == 0 and res.n_missing == 0
    with pytest.raises(ValueError, match="valid"):
        OracleJudge(lambda it: "yes").judge_pairs(items[:1])
    with pytest.raises(ValueError, match="score"):
        OracleJudge(lambda it: {"valid": True, "score": 2}).judge_pairs(items[:1])
    with pytest.raises(ValueError, match="response"):
        judge.judge_pairs([{"instruction": "i", "reference": "r"}])
