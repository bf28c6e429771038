"""The per-example contract: for every metric, the rows of per_example.jsonl reproduce the cell's
values ("mean": the mean of the value's column; "recompute": Metric.recompute(rows)), bit for bit
except lm_loss (fp32 accumulation error, see kdbench/metrics/lm_loss.py),
after a JSON round trip, on tiny random models in the toy world and with the LLM judge against
the local fake server. Also the new evaluation API: EvalResult, eval_cache_spec, EvalSession.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from kdbench.config import EvalConfig
from kdbench.evaluation import EvalResult, EvalSession, eval_cache_spec, evaluate
from kdbench.metrics.base import METRICS, PER_EXAMPLE_MODES, EvalContext, mean_of
from kdbench.metrics.judge import JUDGE_PROMPT_VERSION
from kdbench.schema import Example
from kdbench.task import Task

from fixtures import build_random_model
from test_judge import KEY_ENV, fake  # noqa: F401  (the local OpenAI-compatible server fixture)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models, 1 torch thread

TOY_METRICS = ["rouge_l", "judge", "validity", "exact_match", "mode_coverage", "ece", "dist4", "exposure_bias",
               "lm_loss"]
EV = EvalConfig(seeds=[1], max_new_tokens=10, max_prompt_tokens=48, batch_size=16, coverage_samples=2,
                exposure_prompts=5, exposure_samples=2)


@pytest.fixture(scope="module")
def toy():
    from kdbench import models as M
    from kdbench.task import TaskOptions, make_task

    task = make_task("toy", TaskOptions(extra={"n_creatures": 8, "n_train": 50, "n_dev": 7, "n_test": 24,
                                               "pretrain_docs": 20}))
    tok = M.build_word_tokenizer(task.vocabulary())
    student = build_random_model("gpt2", tok, hidden=16, layers=1, heads=2, n_positions=96, seed=1).eval()
    teacher = build_random_model("gpt2", tok, hidden=16, layers=1, heads=2, n_positions=96, seed=2).eval()
    return SimpleNamespace(task=task, tok=tok, student=student, teacher=teacher, exs=task.examples("test"))


def _evaluate(toy, model, label, tmp_path, metrics=TOY_METRICS, settings=None, seed=3, session=None):
    return evaluate(model, toy.tok, toy.task, toy.exs, seed, EV, metrics, max_prompt_length=48, model_label=label,
                    teacher_fn=lambda: toy.teacher, settings=settings or {"judge": {}},
                    session=session or EvalSession(tmp_path))


# lm_loss keeps its historical cell value (fp32 sums per batch); its rows (fp64 per example)
# reproduce it to fp32 accumulation error. Every other value comes back bit for bit.
TOLERANCE = {"lm_loss": 1e-6}


def _assert_reproduces(got: dict, values: dict, what=""):
    assert set(got) == set(values), what
    for k, v in values.items():
        if k in TOLERANCE:
            assert got[k] == pytest.approx(v, rel=TOLERANCE[k], abs=0), (what, k)
        else:
            assert got[k] == v, (what, k, got[k], v)


def _roundtrip(rows):
    """What the statistics layer reads back from per_example.jsonl."""
    return [json.loads(json.dumps(r)) for r in rows]


def _reproduced(rows, metrics):
    out = {}
    for name in metrics:
        got = METRICS.get(name).reproduce(rows)
        assert not set(got) & set(out), f"two metrics claim the same value: {set(got) & set(out)}"
        out.update(got)
    return out


def test_toy_rows_reproduce_every_value(toy, tmp_path):
    for label, model in (("kd", toy.student), ("teacher", toy.teacher)):
        res = _evaluate(toy, model, label, tmp_path)
        assert isinstance(res, EvalResult)
        rows = _roundtrip(res.per_example)
        assert [r["id"] for r in rows] == [ex.id for ex in toy.exs]
        for r in rows:
            assert all(v is None or isinstance(v, float) for k, v in r.items() if k != "id"), r
        # the toy world exercises every metric: each one's values must come back, bit for bit
        assert set(res.values) >= {"rouge_l", "judge", "validity", "exact_match", "mode_coverage", "ece", "cls_acc",
                                   "dist4", "exposure_bias", "lm_loss"}, res.values
        _assert_reproduces(_reproduced(rows, TOY_METRICS), res.values, label)


@pytest.mark.parametrize("name", TOY_METRICS)
def test_each_metric_declares_its_contract(toy, tmp_path, name):
    m = METRICS.get(name)
    assert m.per_example in PER_EXAMPLE_MODES and m.per_example != "none", name
    res = _evaluate(toy, toy.student, "kd", tmp_path, metrics=[name], seed=4)
    rows = _roundtrip(res.per_example)
    assert res.values
    _assert_reproduces(m.reproduce(rows), res.values, name)
    if m.per_example == "mean":  # same scale: the column is named like the value and averages to it
        assert mean_of(rows, name) == res.values[name]
    else:  # raw fields carry the metric's prefix, so they cannot clash with another metric's
        fields = {k for r in rows for k in r if k != "id"}
        assert fields and all(f.startswith(name + ".") for f in fields), fields


def test_subsets_are_null_elsewhere(toy, tmp_path):
    res = _evaluate(toy, toy.student, "kd", tmp_path, metrics=["ece", "mode_coverage", "exposure_bias"], seed=5)
    for ex, r in zip(toy.exs, res.per_example):
        assert (r["ece.confidence"] is not None) == bool(ex.meta.get("label_words"))
        assert (r["mode_coverage"] is not None) == bool(ex.meta.get("modes"))
    assert sum(r["exposure_bias.R"] is not None for r in res.per_example) == EV.exposure_prompts


def test_generation_records_keep_check_family_and_judge(toy, tmp_path):
    res = _evaluate(toy, toy.student, "kd", tmp_path, metrics=["rouge_l"], seed=6)
    # the check is the task's verdict on the generation, recorded whichever metrics ran
    assert all("check" in g and "family" in g and "judge" not in g for g in res.generations)
    res = _evaluate(toy, toy.student, "kd", tmp_path, metrics=["judge"], seed=6)
    assert list(res.generations[0]) == ["id", "prompt", "response", "references", "n_tokens", "check", "family",
                                        "judge"]
    assert [g["judge"]["model"] for g in res.generations] == [r["judge.model"] for r in res.per_example]


# ------------------------------------------------------------------------------------------------
# lm_loss's raw rows; the LLM judge: missing pairs and order flips come back from the rows too


def test_lm_loss_rows_sum_the_token_losses(toy):
    from kdbench.data import encode_pair
    from kdbench.metrics.lm_loss import lm_loss, score_pairs

    pairs = [encode_pair(toy.tok, ex.prompt, ex.references[0], 64, 48) for ex in toy.exs[:5]]
    value, nll, tokens = score_pairs(toy.student, pairs, toy.tok.pad_token_id, batch_size=2)
    assert value == lm_loss(toy.student, pairs, toy.tok.pad_token_id, 2)  # the historical number, unchanged
    assert tokens == [len(r) for _, r in pairs]
    for (p, r), got in zip(pairs, nll):  # one pair at a time, no padding: an independent route
        one = score_pairs(toy.student, [(p, r)], toy.tok.pad_token_id, 1)
        assert got == pytest.approx(one[1][0], rel=1e-6) and one[0] * len(r) == pytest.approx(got, rel=1e-5)


def test_llm_judge_rows_reproduce_score_missing_and_disagreement(toy, fake, tmp_path):  # noqa: F811
    exs = toy.exs[:4]
    preds = ["p1", "p2", "p3", "p4"]
    for p, r in zip(preds, (5, 7, 3, 9)):
        fake.ratings[p] = r
    for ex, r in zip(exs, (5, 6, 8, 4)):
        fake.ratings[ex.references[0]] = r
    fake.first_position_bonus = 1  # item 1 (5 vs 5) flips with the order; the others do not
    settings = {"judge": {"backend": "openai", "model": "fake-judge", "base_url": fake.base_url,
                          "api_key_env": KEY_ENV, "timeout_s": 2.0, "backoff_base_s": 0.001,
                          "backoff_max_s": 0.005, "max_workers": 1, "max_calls": 7}}
    ctx = EvalContext(task=toy.task, examples=list(exs), predictions=preds, seed=1, settings=settings,
                      run_dir=tmp_path, session=EvalSession(tmp_path))
    values = {k: float(v) for k, v in METRICS.get("judge").fn(ctx).items() if v is not None}
    assert values["judge_missing"] == 1.0  # 7 calls for 8 prompts: one item lacks an order
    assert values["judge_disagreement"] > 0
    rows = _roundtrip(ctx.per_example_rows())
    assert METRICS.get("judge").recompute(rows) == values
    assert sum(r["judge.flip"] is None for r in rows) == 1  # the missing item has no flip


# ------------------------------------------------------------------------------------------------
# cache key, session, channel validation


def test_eval_cache_spec_matches_the_old_cell_spec():
    metrics = ["rouge_l", "validity", "ece", "lm_loss"]
    assert eval_cache_spec(metrics, {"judge": {"model": "x"}}) == {"metrics": {m: 1 for m in metrics}}
    judge = {"backend": "openai", "model": "gpt-4o", "base_url": None, "order": "both", "max_calls": 5}
    spec = eval_cache_spec(metrics + ["judge"], {"judge": judge})
    # what runner.eval_cell built by hand before metrics declared their own key
    old = {k: judge.get(k) for k in ("backend", "model", "base_url", "order")}
    old["prompt_version"] = JUDGE_PROMPT_VERSION
    assert spec == {"metrics": {**{m: 1 for m in metrics}, "judge": 1}, "judge": old}
    # exposure settings change the numbers, so they are part of the key when given
    assert eval_cache_spec(["exposure_bias"], {"exposure": {"prompts": 4}})["exposure_bias"] == {"prompts": 4}
    assert eval_cache_spec(["exposure_bias"], {}) == {"metrics": {"exposure_bias": 1}}


def test_session_close_closes_states():
    closed = []

    class State:
        def close(self):
            closed.append(self)

    s = EvalSession()
    first = s.state(State)
    assert s.state(State) is first  # one instance per session
    s.close()
    assert closed == [first] and s.state(State) is not first


class _NoChecker(Task):
    def load_split(self, split):
        return [Example(id=f"x{i}", instruction="", input="", prompt="", references=["a"]) for i in range(3)]


def test_record_validation():
    task = _NoChecker()
    ctx = EvalContext(task=task, examples=task.examples("test"), predictions=["a", "b", "c"], seed=0)
    assert ctx.checks() == [None, None, None] and not ctx.has_checker()
    ctx.record("v", [1, None, float("nan")])
    assert [r["v"] for r in ctx.per_example_rows()] == [1.0, None, None]
    with pytest.raises(ValueError, match="twice"):
        ctx.record("v", [1, 2, 3])
    with pytest.raises(ValueError, match="2 values for 3"):
        ctx.record("w", [1, 2])
    with pytest.raises(ValueError, match="out of range"):
        ctx.record("w", [1], where=[3])
    with pytest.raises(ValueError, match="'id'"):
        ctx.record("id", [1, 2, 3])
    ctx.record("w", [5.0], where=[2])
    assert [r["w"] for r in ctx.per_example_rows()] == [None, None, 5.0]
    assert METRICS.get("validity").fn(ctx) is None  # no checker: not applicable, nothing recorded
    assert "validity" not in ctx.per_example_rows()[0]


def test_columnar_recompute_gives_the_row_recompute_values():
    """The bootstrap recomputes ECE and ExAccErr from columns; that form must give exactly what the
    row form gives (absent fields as None in rows, NaN in columns), or CIs would drift from the cells."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = 300
    fields = {
        "ece.confidence": lambda i: float(rng.uniform(0.5, 1)) if i % 3 else None,
        "ece.correct": lambda i: float(rng.random() < 0.7) if i % 3 else None,
        "exposure_bias.R": lambda i: float(rng.uniform(0, 5)) if i < 64 else None,
        "exposure_bias.eps": lambda i: float(rng.uniform(0.5, 3)) if i < 64 else None,
        "exposure_bias.R@8": lambda i: float(rng.uniform(0, 2)) if i < 64 else None,
        "exposure_bias.eps@8": lambda i: float(rng.uniform(0.1, 1)) if i < 64 else None,
        "judge.model": lambda i: float(rng.integers(1, 11)) if i % 5 else None,
        "judge.reference": lambda i: float(rng.integers(1, 11)) if i % 5 else None,
        "judge.missing": lambda i: float(i % 5 == 0),
        "judge.flip": lambda i: float(rng.random() < 0.2) if i % 2 else None,
        "lm_loss.nll": lambda i: float(rng.uniform(0, 40)) if i % 7 else None,
        "lm_loss.tokens": lambda i: float(rng.integers(1, 20)) if i % 7 else None,
    }
    rows = [{k: f(i) for k, f in fields.items()} for i in range(n)]
    cols = {k: np.array([np.nan if r[k] is None else r[k] for r in rows]) for k in fields}
    for name in ("ece", "exposure_bias", "judge", "lm_loss"):
        metric = METRICS.get(name)
        assert metric.recompute_arrays_fn is not None
        want = metric.recompute(rows)
        assert want and metric.recompute_columns(cols) == want, name
    oracle = {"exposure_bias.oracle": np.ones(4), "exposure_bias.R": np.full(4, np.nan)}
    assert METRICS.get("exposure_bias").recompute_columns(oracle) == {"exposure_bias": 0.0}
