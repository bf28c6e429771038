"""The metrics layer: ExAccErr maths and alignment, LM loss, the judge metric (oracle, local
OpenAI-compatible server, skip path, cache across reruns), Rouge-L against a naive
implementation, and the toy world's default metrics end to end on tiny random models.

Hand-worked values are in the comments next to each assertion.
"""
from __future__ import annotations

import dataclasses

import logging
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kdbench.config import EvalConfig
from kdbench.errors import ConfigError
from kdbench.metrics.base import METRICS, EvalContext, EvalSession
from kdbench.metrics.exposure import accumulated, exposure_curve, sequence_errors
from kdbench.metrics.judge import JUDGE_PROMPT_VERSION, judge_settings, reset_judge_runs
from kdbench.metrics.lm_loss import lm_loss
from kdbench.metrics.rouge import rouge_l
from kdbench.plugins import load_plugins
from kdbench.schema import Example
from kdbench.task import Task
from fixtures import build_random_model

from test_judge import KEY_ENV, fake  # noqa: F401  (the local OpenAI-compatible server fixture)

load_plugins()

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models, 1 torch thread


@pytest.fixture(autouse=True)
def _fresh_judge_runs():
    reset_judge_runs()  # each test is a new process as far as per-run judge state goes
    yield
    reset_judge_runs()


# ------------------------------------------------------------------------------------------------
# ExAccErr curve maths


def test_accumulated_pads_and_truncates():
    acc = accumulated([[1.0, 2.0], [3.0], [1.0, 1.0, 1.0, 5.0]], max_len=3)
    # a sequence that ended adds nothing more; positions past max_len are ignored
    assert acc.tolist() == [[1, 3, 3], [3, 3, 3], [1, 2, 3]]


def test_exposure_curve_hand_values():
    # prompt 1: model samples [1,2] and [3]  -> accumulated [1,3,3], [3,3,3] -> mean [2,3,3]
    #           teacher samples [1] and [1,1] -> [1,1,1], [1,2,2]           -> mean [1,1.5,1.5]
    # prompt 2: model [4,2,2] -> [4,6,8];  teacher [1,1,1] -> [1,2,3]
    # R = [3, 4.5, 5.5], eps = [1, 1.75, 2.25]
    # l=1: r = 3        ExAccErr 200;   resid R_i - r e_i = [2-3, 4-3] = [-1, 1]
    #      se = sqrt((1+1)/(2*1)) / 1 = 1                       -> 100
    # l=2: r = 18/7     ExAccErr 1100/7; resid [3 - 27/7, 6 - 36/7] = [-6/7, 6/7]
    #      se = sqrt((72/49)/2) / 1.75 = (6/7)(4/7) = 24/49     -> 2400/49
    # l=3: r = 22/9     ExAccErr 1300/9; resid [3 - 11/3, 8 - 22/3] = [-2/3, 2/3]
    #      se = (2/3) / 2.25 = 8/27                             -> 800/27
    model = [[[1, 2], [3]], [[4, 2, 2]]]
    teacher = [[[1], [1, 1]], [[1, 1, 1]]]
    c = exposure_curve(model, teacher, max_len=3)
    assert c["lengths"] == [1, 2, 3] and c["n_prompts"] == 2
    assert c["R"] == pytest.approx([3, 4.5, 5.5])
    assert c["eps"] == pytest.approx([1, 1.75, 2.25])
    assert c["exaccerr"] == pytest.approx([200, 1100 / 7, 1300 / 9])
    assert c["stderr"] == pytest.approx([100, 2400 / 49, 800 / 27])
    # max_len defaults to the longest sequence
    assert exposure_curve(model, teacher)["lengths"] == [1, 2, 3]


def test_exposure_curve_equal_errors_and_undefined_cases():
    same = [[[0.5, 0.5]], [[1.0]]]
    c = exposure_curve(same, same, max_len=2)
    assert c["exaccerr"] == [0.0, 0.0] and c["stderr"] == [0.0, 0.0]
    one = exposure_curve([[[2.0]]], [[[1.0]]], max_len=1)  # one prompt: no standard error
    assert one["exaccerr"] == [100.0] and one["stderr"] == [None]
    zero = exposure_curve([[[1.0]], [[1.0]]], [[[0.0]], [[0.0]]], max_len=1)  # eps = 0: undefined
    assert zero["exaccerr"] == [None] and zero["stderr"] == [None]
    with pytest.raises(ValueError, match="same prompts"):
        exposure_curve([[[1.0]]], [[[1.0]], [[1.0]]])
    with pytest.raises(ValueError, match="no samples"):
        exposure_curve([[]], [[[1.0]]])


class TableLM(torch.nn.Module):
    """Next-token log-probs depend on the current token only: logits[t] = table[input_ids[t]]."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.log(torch.tensor(table, dtype=torch.float64)).float())

    def forward(self, input_ids, attention_mask=None, **kw):
        return SimpleNamespace(logits=self.table[input_ids])


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


T_TABLE = [[0.5, 0.25, 0.25], [0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3]]
S_TABLE = [[0.25, 0.5, 0.25], [0.2, 0.3, 0.5], [0.5, 0.25, 0.25]]


def test_sequence_errors_alignment():
    teacher, student = TableLM(T_TABLE), TableLM(S_TABLE)
    k0 = _kl(T_TABLE[0], S_TABLE[0])  # = 0.25 ln 2
    k2 = _kl(T_TABLE[2], S_TABLE[2])
    assert k0 == pytest.approx(0.25 * math.log(2))
    # prompt [1, 0], response [2, 1, 0]: token r[0] is predicted at the last prompt position (token 0),
    # r[1] at token r[0] = 2, r[2] at r[1] = 1  ->  [KL(0), KL(2), KL(1) = 0].
    # The upstream slice logits[:, len(prompt):] would give [KL(2), 0, KL(0)] instead.
    # second row: prompt [2], response [0] -> [KL(2)] (shorter, right-padded in the same batch)
    errs = sequence_errors(student, teacher, [[1, 0], [2]], [[2, 1, 0], [0]], pad_id=1, batch_size=8)
    assert errs[0] == pytest.approx([k0, k2, 0.0], abs=1e-6)
    assert errs[1] == pytest.approx([k2], abs=1e-6)
    # batch size does not matter; vocab_size cuts padded ids off (both renormalised over 2 ids)
    assert sequence_errors(student, teacher, [[1, 0]], [[2, 1, 0]], 1, 1)[0] == pytest.approx(errs[0], abs=1e-6)
    cut = sequence_errors(student, teacher, [[1, 0]], [[1]], 1, 1, vocab_size=2)[0]
    assert cut == pytest.approx([_kl([2 / 3, 1 / 3], [1 / 3, 2 / 3])], abs=1e-6)


# ------------------------------------------------------------------------------------------------
# LM loss


def test_lm_loss_hand_value():
    model = TableLM(S_TABLE)
    # pair 1: prompt [1], response [2, 0]: -ln q(2|1) - ln q(0|2) = -ln 0.5 - ln 0.5
    # pair 2: prompt [0, 2], response [1]:  -ln q(1|2) = -ln 0.25
    # mean over the 3 response tokens (one token one vote): (2 ln 2 + 2 ln 2) / 3 = 4/3 ln 2
    pairs = [([1], [2, 0]), ([0, 2], [1])]
    assert lm_loss(model, pairs, pad_id=0, batch_size=1) == pytest.approx(4 / 3 * math.log(2), abs=1e-6)
    assert lm_loss(model, pairs, pad_id=0, batch_size=2) == pytest.approx(4 / 3 * math.log(2), abs=1e-6)
    # vocab_size=2 renormalises over ids {0, 1}: q(.|1) -> (0.4, 0.6), q(.|0) -> (1/3, 2/3), q(.|2) -> (2/3, 1/3)
    # pairs ([1], [0, 0]) and ([0, 2], [1]): (-ln 0.4 - ln 1/3 - ln 1/3) / 3
    got = lm_loss(model, [([1], [0, 0]), ([0, 2], [1])], 0, 2, vocab_size=2)
    assert got == pytest.approx((math.log(2.5) + 2 * math.log(3)) / 3, abs=1e-6)
    with pytest.raises(ValueError):
        lm_loss(model, [], 0)


# ------------------------------------------------------------------------------------------------
# a tiny toy world and tiny random models for metric-level tests


@pytest.fixture(scope="module")
def toy():
    from kdbench import models as M
    from kdbench.task import TaskOptions, make_task

    task = make_task("toy", TaskOptions(extra={"n_creatures": 8, "n_train": 50, "n_dev": 7, "n_test": 21,
                                               "pretrain_docs": 20}))
    tok = M.build_word_tokenizer(task.vocabulary())
    student = build_random_model("gpt2", tok, hidden=16, layers=1, heads=2, n_positions=96, seed=1).eval()
    teacher = build_random_model("gpt2", tok, hidden=16, layers=1, heads=2, n_positions=96, seed=2).eval()
    return SimpleNamespace(task=task, tok=tok, student=student, teacher=teacher, exs=task.examples("test"))


EV = EvalConfig(seeds=[1], max_new_tokens=6, max_prompt_tokens=48, batch_size=16, coverage_samples=2)


def _ctx(toy, preds=None, settings=None, run_dir=None, label="kd", task=None, exs=None, ev=None, session=None):
    exs = exs if exs is not None else toy.exs
    preds = preds if preds is not None else [ex.references[0] for ex in exs]
    extra = {} if session is None else {"session": session}  # None: the default (process-wide) session
    return EvalContext(task=task or toy.task, examples=list(exs), predictions=list(preds), seed=1,
                       model=toy.student, tokenizer=toy.tok, model_label=label, eval_config=ev or EV,
                       teacher_fn=lambda: toy.teacher, settings=dict(settings or {}), max_prompt_length=48,
                       run_dir=run_dir, **extra)


def test_lm_loss_metric_matches_per_example_loop(toy):
    from kdbench.data import encode_pair

    ctx = _ctx(toy)
    got = METRICS.get("lm_loss").fn(ctx)
    nll, n = 0.0, 0
    with torch.no_grad():  # one example at a time, no padding: an independent route to the number
        for ex in toy.exs:
            p, r = encode_pair(toy.tok, ex.prompt, ex.references[0], 48 + 6, 48)
            logp = torch.log_softmax(toy.student(input_ids=torch.tensor([p + r])).logits[0].float(), -1)
            nll -= sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(r))
            n += len(r)
    assert got == pytest.approx(nll / n, rel=1e-5)
    assert METRICS.get("lm_loss").higher_is_better is False


def test_exposure_metric_on_tiny_models(toy):
    ctx = _ctx(toy, ev=dataclasses.replace(EV, exposure_prompts=5, exposure_samples=2))
    vals = METRICS.get("exposure_bias").fn(ctx)
    curve = ctx.artifacts["exposure_curve"]
    assert set(vals) == {"exposure_bias"}  # max length 6 < 8: no @8/@16 sub-values
    assert curve["lengths"] == list(range(1, 7)) and curve["n_prompts"] == 5 and curve["k"] == 2
    assert vals["exposure_bias"] == pytest.approx(curve["exaccerr"][-1])
    assert all(s is None or s >= 0 for s in curve["stderr"])
    # position 1 is predicted from the prompt alone, the same context for model and teacher text,
    # so R(1) = eps(1) exactly; an off-by-one alignment would score position 2 here instead
    assert curve["R"][0] == pytest.approx(curve["eps"][0], rel=1e-9) and curve["exaccerr"][0] == pytest.approx(0.0, abs=1e-6)
    # deterministic for a seed
    again = _ctx(toy, ev=dataclasses.replace(EV, exposure_prompts=5, exposure_samples=2))
    assert METRICS.get("exposure_bias").fn(again) == vals
    # the teacher row: 0 by definition, nothing sampled; no teacher: not applicable
    t = _ctx(toy, label="teacher")
    assert METRICS.get("exposure_bias").fn(t) == {"exposure_bias": 0.0} and t.artifacts["exposure_curve"]["self"]
    none = _ctx(toy)
    none.teacher_fn = None
    assert METRICS.get("exposure_bias").fn(none) is None
    m = METRICS.get("exposure_bias")
    assert not m.higher_is_better and m.direction("exposure_bias@8") is False


# ------------------------------------------------------------------------------------------------
# judge metric


def test_judge_oracle_backend_on_toy(toy):
    exs = toy.exs[:4]
    # two right answers (rated 10), two wrong (rated 1); references rated 10:
    # 100 * (10 + 10 + 1 + 1) / (4 * 10) = 55
    preds = [exs[0].references[0], "wrong answer", exs[2].references[0], ""]
    ctx = _ctx(toy, preds=preds, exs=exs)
    assert METRICS.get("judge").fn(ctx) == {"judge": pytest.approx(55.0)}
    art = ctx.artifacts["judge"]
    assert art["label"] == "oracle" and art["backend"] == "oracle" and art["calls"] == 0 and art["missing"] == 0
    assert [r["model"] for r in ctx.annotations()["judge"]] == [10.0, 1.0, 10.0, 1.0]
    assert [r["judge.model"] for r in ctx.per_example_rows()] == [10.0, 1.0, 10.0, 1.0]


def _openai_settings(fake, **kw):  # noqa: F811
    s = {"backend": "openai", "model": "fake-judge", "base_url": fake.base_url, "api_key_env": KEY_ENV,
         "timeout_s": 2.0, "backoff_base_s": 0.001, "backoff_max_s": 0.005, "max_workers": 2}
    s.update(kw)
    return s


def test_judge_openai_backend_cache_and_rerun(toy, fake, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="kdbench")
    exs = toy.exs[:3]
    preds = ["answer a", "answer b", "answer c"]
    for p, r in zip(preds, (6, 4, 9)):
        fake.ratings[p] = r
    for ex, r in zip(exs, (8, 8, 6)):
        fake.ratings[ex.references[0]] = r
    fake.first_position_bonus = 1  # the judge favours position 1: both orders cancel it
    settings = {"judge": _openai_settings(fake)}
    ctx = _ctx(toy, preds=preds, exs=exs, settings=settings, run_dir=tmp_path)
    vals = METRICS.get("judge").fn(ctx)
    # model first: (7, 8), (5, 8), (10, 6); reference first: (6, 9), (4, 9), (9, 7)
    # averaged: model 6.5, 4.5, 9.5 = 20.5; reference 8.5, 8.5, 6.5 = 23.5 -> 100 * 20.5 / 23.5
    assert vals["judge"] == pytest.approx(100 * 20.5 / 23.5)
    assert vals["judge_missing"] == 0
    # the preferred answer is the same in both orders for every item (7<8 and 6<9; 5<8 and 4<9;
    # 10>6 and 9>7), so the order-disagreement rate is 0
    assert vals["judge_disagreement"] == 0.0
    art = ctx.artifacts["judge"]
    assert art["label"] == "fake-judge" and art["prompt_version"] == JUDGE_PROMPT_VERSION
    assert art["calls"] == 6 and art["cache_hits"] == 0 and fake.n_requests == 6
    prompt = (tmp_path / "judge_prompt.txt").read_text()
    assert "{answer_1}" in prompt and "{answer_2}" in prompt and "{request}" in prompt and JUDGE_PROMPT_VERSION in prompt
    assert (tmp_path / "judge_cache.sqlite").exists()

    # another cell of the same run (another seed, same texts): all cache hits, zero new calls
    ctx2 = _ctx(toy, preds=preds, exs=exs, settings=settings, run_dir=tmp_path)
    assert METRICS.get("judge").fn(ctx2) == vals
    assert ctx2.artifacts["judge"]["calls"] == 0 and ctx2.artifacts["judge"]["cache_hits"] == 6
    # a rerun in a new process: the cache on disk answers, still zero calls, and the log says so
    reset_judge_runs()
    caplog.clear()
    ctx3 = _ctx(toy, preds=preds, exs=exs, settings=settings, run_dir=tmp_path)
    assert METRICS.get("judge").fn(ctx3) == vals
    assert fake.n_requests == 6
    assert "0 new calls, 6 cache hits" in caplog.text


def test_judge_openai_run_budget_spans_cells(toy, fake, tmp_path):  # noqa: F811
    exs = toy.exs[:2]
    for p in ("x", "y"):
        fake.ratings[p] = 5
    for ex in exs:
        fake.ratings[ex.references[0]] = 5
    settings = {"judge": _openai_settings(fake, max_calls=3)}
    first = _ctx(toy, preds=["x", "y"], exs=exs, settings=settings, run_dir=tmp_path)
    v1 = METRICS.get("judge").fn(first)
    assert fake.n_requests == 3 and v1["judge_missing"] == 1  # item 2 got one of its two orders only
    second = _ctx(toy, preds=["y", "x"], exs=exs, settings=settings, run_dir=tmp_path)  # new texts: new prompts
    v2 = METRICS.get("judge").fn(second)
    assert fake.n_requests == 3  # the run's budget is spent: no call from the second cell
    assert v2 == {"judge": None, "judge_missing": 2}  # None is dropped by the evaluation loop
    assert second.artifacts["judge"]["missing_reasons"] == {"budget": 2}
    assert second.artifacts["judge"]["run_calls"] == 3


def test_judge_state_lives_in_the_session(toy, fake, tmp_path):  # noqa: F811
    """Two sessions (two benchmark runs in one process) keep separate budgets; close() ends a run."""
    exs = toy.exs[:1]
    fake.ratings["x"] = 5
    fake.ratings[exs[0].references[0]] = 5
    settings = {"judge": _openai_settings(fake, max_calls=2, cache_path=":memory:")}
    with EvalSession(tmp_path) as a, EvalSession(tmp_path) as b:
        for s in (a, b):  # each run has its own budget of 2 calls
            v = METRICS.get("judge").fn(_ctx(toy, preds=["x"], exs=exs, settings=settings, run_dir=tmp_path, session=s))
            assert v["judge_missing"] == 0
        assert fake.n_requests == 4
        from kdbench.metrics.judge import JudgeRuns

        run = a.state(JudgeRuns).get(tmp_path, settings)
        assert run.client is not None and run.calls == 2
    assert a.state(JudgeRuns).get(tmp_path, settings) is not run  # closed and forgotten


class NoCheckerTask(Task):
    description = "a task without an exact checker"

    def load_split(self, split):
        return [Example(id="a", instruction="Say hi.", input="", prompt="Say hi.\n", references=["hi"], meta={})]


def test_judge_skipped_without_key_or_endpoint(toy, monkeypatch, caplog, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    caplog.set_level(logging.INFO, logger="kdbench")
    task = NoCheckerTask()
    exs = task.examples("test")
    for _ in range(3):  # three cells of one run: one log line
        ctx = _ctx(toy, preds=["hello"], exs=exs, task=task, settings={"judge": {"model": "gpt-4o"}},
                   run_dir=tmp_path)
        assert METRICS.get("judge").fn(ctx) is None
    # unique record objects (caplog's handler may sit on the kdbench logger and on the root)
    lines = list({id(r): r for r in caplog.records if "judge metric skipped" in r.getMessage()}.values())
    assert len(lines) == 1 and "OPENAI_API_KEY" in lines[0].getMessage()
    # explicit backend openai without a key: skipped too, not a crash
    ctx = _ctx(toy, preds=["hello"], exs=exs, task=task, settings={"judge": {"backend": "openai"}})
    assert METRICS.get("judge").fn(ctx) is None
    # oracle forced on a task without a checker: skipped with its own line
    ctx = _ctx(toy, preds=["hello"], exs=exs, task=task, settings={"judge": {"backend": "oracle"}})
    assert METRICS.get("judge").fn(ctx) is None
    assert not (tmp_path / "judge_cache.sqlite").exists()


def test_judge_settings_validation():
    backend, cfg, order = judge_settings({"model": "m", "max_calls": 5})
    assert backend == "auto" and order == "both" and cfg.model == "m" and cfg.max_calls == 5
    with pytest.raises(ConfigError, match="judge.backend"):
        judge_settings({"backend": "gpt4"})
    with pytest.raises(ConfigError, match="judge.order"):
        judge_settings({"order": "random"})
    with pytest.raises(ConfigError, match="judge.modle.*Did you mean 'model'"):
        judge_settings({"modle": "x"})


# ------------------------------------------------------------------------------------------------
# Rouge-L against a naive implementation


def _naive_rouge_l(pred: str, refs: list[str]) -> float:
    """LCS by the textbook DP and F = 2PR / (P + R); only the tokeniser (lowercase, non-alphanumerics
    to spaces, Porter stemming) is rouge_score's."""
    from rouge_score import tokenizers

    tok = tokenizers.DefaultTokenizer(use_stemmer=True)
    p = tok.tokenize(pred)
    best = 0.0
    for ref in refs:
        r = tok.tokenize(ref)
        if not p or not r:
            continue
        table = [[0] * (len(r) + 1) for _ in range(len(p) + 1)]
        for i in range(1, len(p) + 1):
            for j in range(1, len(r) + 1):
                table[i][j] = table[i - 1][j - 1] + 1 if p[i - 1] == r[j - 1] else max(table[i - 1][j], table[i][j - 1])
        lcs = table[len(p)][len(r)]
        if lcs:
            prec, rec = lcs / len(p), lcs / len(r)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


def test_rouge_l_matches_naive_implementation():
    rng = random.Random(0)
    words = ["The", "cat", "cats", "running", "runs", "ran", "blue", "sky", "a", "is", "Red", "fox", "foxes",
             "jumped", "jumping", "over", "lazy", "dog", "dogs", "3", "42"]
    punct = ["", "", ",", ".", "!", "?", "'s"]

    def text():
        return " ".join(rng.choice(words) + rng.choice(punct) for _ in range(rng.randint(0, 12)))

    preds = [text() for _ in range(150)]
    refs = [[text() for _ in range(rng.randint(1, 3))] for _ in range(150)]
    naive = 100.0 * sum(_naive_rouge_l(p, r) for p, r in zip(preds, refs)) / len(preds)
    assert rouge_l(preds, refs) == pytest.approx(naive, abs=1e-9)
    for p, r in list(zip(preds, refs))[:40]:
        assert rouge_l([p], [r]) == pytest.approx(100.0 * _naive_rouge_l(p, r), abs=1e-9)
    assert rouge_l(["Cats running"], [["the cat runs"]]) == pytest.approx(100 * 2 * (1 * 2 / 3) / (1 + 2 / 3))


# ------------------------------------------------------------------------------------------------
# the toy world's default metrics through evaluate()


def test_toy_default_metrics_end_to_end(toy, tmp_path):
    from kdbench.evaluation import evaluate

    assert toy.task.default_metrics == ("rouge_l", "judge", "validity", "exact_match", "mode_coverage", "ece",
                                        "dist4", "exposure_bias", "lm_loss")
    for label, model in (("kd", toy.student), ("teacher", toy.teacher)):
        res = evaluate(model, toy.tok, toy.task, toy.exs, 3, EV, list(toy.task.default_metrics),
                       max_prompt_length=48, model_label=label, teacher_fn=lambda: toy.teacher,
                       settings={"judge": {}, "exposure": {"prompts": 4, "samples": 2}},
                       session=EvalSession(tmp_path))
        vals, gens, art = res.values, res.generations, res.artifacts
        assert [r["id"] for r in res.per_example] == [ex.id for ex in toy.exs]
        for key in ("rouge_l", "judge", "validity", "exact_match", "ece", "cls_acc", "dist4", "exposure_bias",
                    "lm_loss"):
            assert key in vals and math.isfinite(vals[key]), (label, key, vals)
        assert 0.0 <= vals["ece"] <= 1.0 and 0.0 <= vals["dist4"] <= 100.0 and vals["lm_loss"] > 0
        assert len(art["reliability"]) == 10
        assert sum(b["count"] for b in art["reliability"]) == sum(1 for ex in toy.exs if ex.meta.get("label_words"))
        assert art["judge"]["label"] == "oracle"
        assert all("judge" in g for g in gens)
        assert np.isclose(vals["judge"], 100 * sum(g["judge"]["model"] for g in gens) / (10 * len(gens)))
    assert vals["exposure_bias"] == 0.0  # the teacher row
