"""Secrets and determinism, on two runs of the same micro benchmark with the LLM judge on
(`--judge-backend openai`) against a local OpenAI-compatible server, with a recognisable fake key
in OPENAI_API_KEY.

- Determinism: the same command into two folders with separate stage caches, one in this process
  and one in a fresh subprocess, gives a byte-identical leaderboard.json (and equal metrics and
  weights).
- Secrets: the key reaches the endpoint (the server saw it) but no file either run wrote (configs,
  logs, results, caches, the judge's SQLite cache) and nothing printed contains it.
"""
from __future__ import annotations

import contextlib
import io
import os
import re

import pytest

import micro_run
from kdbench.cli import main
from kdbench.metrics.judge import reset_judge_runs
from fake_openai import FakeOpenAI

SECRET = "sk-kdbench-FAKE-KEY-do-not-write-3b9e1d7c"


class DeterministicJudge(FakeOpenAI):
    """Rates every pair from the text it is shown, so both runs get the same ratings."""

    def default_reply(self, body: dict) -> str:
        user = body["messages"][-1]["content"]
        h = sum(user.encode()) % 997
        return f"{1 + h % 10} {1 + (h // 10) % 10}\nRated by a deterministic test judge."


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    proxies = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
    saved = {k: os.environ.get(k) for k in proxies + ("OPENAI_API_KEY", "NO_PROXY")}
    for k in proxies:
        os.environ.pop(k, None)
    os.environ.update(OPENAI_API_KEY=SECRET, NO_PROXY="127.0.0.1,localhost")
    server = DeterministicJudge()
    root = tmp_path_factory.mktemp("det")
    judge = ["--judge-backend", "openai", "--judge-base-url", server.base_url, "--judge-model", "fake-judge"]
    dirs = {"a": (root / "a", root / "a-cache"), "b": (root / "b", root / "b-cache")}
    printed = []
    mp = pytest.MonkeyPatch()
    mp.setattr("kdbench.report.plots.make_plots", lambda run, plot_dir: ([], []))  # see micro_run.skip_plots
    try:
        reset_judge_runs()
        out, cache = dirs["a"]
        o, e = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
            code = main(micro_run.MICRO + judge + ["--out", str(out), "--cache-dir", str(cache)])
        assert code == 0, e.getvalue()[-3000:]
        printed += [o.getvalue(), e.getvalue()]
        out, cache = dirs["b"]
        env = {k: v for k, v in os.environ.items() if k not in proxies}
        r = micro_run.run("none", micro_run.MICRO + judge + ["--out", str(out), "--cache-dir", str(cache)],
                          **{k: env[k] for k in ("OPENAI_API_KEY", "NO_PROXY")})
        assert r.returncode == 0, r.stderr[-3000:]
        printed += [r.stdout, r.stderr]
        yield dirs, server, printed
    finally:
        mp.undo()
        server.close()
        reset_judge_runs()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_same_command_same_seed_gives_an_identical_leaderboard(runs):
    dirs, _, _ = runs
    (a, a_cache), (b, b_cache) = dirs["a"], dirs["b"]
    assert (a / "leaderboard.json").read_bytes() == (b / "leaderboard.json").read_bytes()
    assert micro_run.eval_metrics(a) == micro_run.eval_metrics(b)
    assert micro_run.trained_weights(a, a_cache) == micro_run.trained_weights(b, b_cache)
    assert "| kd |" in (a / "leaderboard.md").read_text()


def test_the_judge_really_ran_with_the_key(runs):
    dirs, server, _ = runs
    assert server.n_requests > 0
    assert set(server.auth) == {f"Bearer {SECRET}"}  # the key went to the endpoint, and only there
    md = (dirs["a"][0] / "leaderboard.md").read_text()
    assert "toy/judge" in md and "fake-judge" in md


def test_the_api_key_is_never_written(runs):
    dirs, _, printed = runs
    needle = SECRET.encode()
    files = [p for out, cache in dirs.values() for d in (out, cache) for p in d.rglob("*") if p.is_file()]
    assert len(files) > 50
    assert any(p.name == "judge_cache.sqlite" for p in files) and any(p.name == "run.log" for p in files)
    leaked = [str(p) for p in files if needle in p.read_bytes()]
    assert not leaked, f"API key written to: {leaked}"
    for text in printed:
        assert SECRET not in text
    # the configs name where the key comes from, never the key
    cfg = (dirs["a"][0] / "config.json").read_text()
    assert re.search(r'"api_key_env"|"backend": "openai"', cfg)
