"""Claims as data: verdicts follow the data, every expectation kind by hand, the paper's registry."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kdbench.claims import (CLAIMS, Claim, Requirement, evaluate_claims, findings_json, findings_markdown,
                            needed_pairs, register_claim, requirements)
from kdbench.stats import compare_table
from synth_scores import simulate


def rec(task, metric, method, baseline, delta, lo, hi, significant=None, student="s", baseline_student=None):
    """A compare_table record made by hand (p_adjusted only matters through `significant`)."""
    sig = (lo > 0 or hi < 0) if significant is None else significant
    return {"task": task, "metric": metric, "method": method, "baseline": baseline, "delta": delta, "ci_low": lo,
            "ci_high": hi, "p_value": 0.001 if sig else 0.5, "p_adjusted": 0.002 if sig else 0.6,
            "significant": sig, "student": student,
            "baseline_student": student if baseline_student is None else baseline_student, "better": None}


def claim(*specs, min_students=1, id="T") -> Claim:
    return Claim(id=id, text="test claim", requirements=tuple(r for s in specs for r in requirements(s)),
                 min_students=min_students)


def verdict(comparisons, c, **kw) -> dict:
    return evaluate_claims(comparisons, [c], **kw)[0]


# ------------------------------------------------------------------------------------------------
# verdicts follow the data (scores -> compare_table -> evaluate_claims)


def _c8_run(rng, minillm_shift: float, noise: float = 1.0, methods=("sft", "kd", "minillm")):
    means = {f"gpt2-s/{m}": 50.0 + (minillm_shift if m == "minillm" else 0.0) for m in methods}
    parts = simulate(rng, means, S=3, P=80, E=2, sd_seed=0.3 * noise, sd_prompt=10, sd_mp=2 * noise,
                     sd_cell=2 * noise, sd_eval=3 * noise, column="mode_coverage")
    return compare_table(parts, "mode_coverage", task="toy", n_resamples=400)


@pytest.mark.parametrize("shift, noise, expected", [(-5.0, 1.0, "supported"), (5.0, 1.0, "contradicted"),
                                                     (-0.05, 4.0, "inconclusive")])
def test_paper_claim_c8_verdict_follows_the_effect(shift, noise, expected):
    # C8: MiniLLM has lower mode coverage than SFT
    f = evaluate_claims(_c8_run(np.random.default_rng(30), shift, noise), ["C8"])[0]
    assert f["verdict"] == expected, f["reason"]
    (ev,) = f["evidence"]
    assert (ev["task"], ev["student"], ev["method"], ev["other"]) == ("toy", "gpt2-s", "minillm", "sft")
    assert ev["ci_low"] <= ev["delta"] <= ev["ci_high"] and ev["p_adjusted"] is not None


def test_a_missing_method_is_not_measured():
    f = evaluate_claims(_c8_run(np.random.default_rng(31), -5.0, methods=("kd", "minillm")), ["C8"])[0]
    assert f["verdict"] == "not measured" and "sft not in the run" in f["reason"]


def test_a_user_claim_in_a_few_lines():
    c = register_claim("test-mykd-validity", "MyKD beats MiniLLM on validity", source="tests",
                       requires=[dict(method="mykd", other="minillm", metric="validity", tasks=["toy"])])
    assert CLAIMS.get("test-mykd-validity") is c
    rng = np.random.default_rng(32)
    parts = simulate(rng, {"m/minillm": 80.0, "m/mykd": 84.0}, S=3, P=80, E=2, column="validity")
    recs = compare_table(parts, "validity", task="toy", baseline="minillm", n_resamples=400)
    assert evaluate_claims(recs, ["test-mykd-validity"])[0]["verdict"] == "supported"
    flipped = simulate(rng, {"m/minillm": 84.0, "m/mykd": 80.0}, S=3, P=80, E=2, column="validity")
    recs = compare_table(flipped, "validity", task="toy", baseline="minillm", n_resamples=400)
    assert evaluate_claims(recs, ["test-mykd-validity"])[0]["verdict"] == "contradicted"
    with pytest.raises(ValueError, match="twice"):
        register_claim("test-mykd-validity", "again", requires=[dict(method="a", other="b", metric="m")])


# ------------------------------------------------------------------------------------------------
# each expectation kind, on hand-made records


def test_higher_and_lower_use_significance_and_either_orientation():
    c = claim(dict(method="minillm", other="kd", metric="validity"))
    assert verdict([rec("toy", "validity", "minillm", "kd", 3, 1, 5)], c)["verdict"] == "supported"
    # the same comparison stored the other way round (kd vs minillm) is flipped
    assert verdict([rec("toy", "validity", "kd", "minillm", -3, -5, -1)], c)["verdict"] == "supported"
    assert verdict([rec("toy", "validity", "kd", "minillm", 3, 1, 5)], c)["verdict"] == "contradicted"
    # a CI that excludes 0 but did not survive the correction is not significant
    assert verdict([rec("toy", "validity", "minillm", "kd", 3, 1, 5, significant=False)], c)["verdict"] == "inconclusive"
    low = claim(dict(method="minillm", other="kd", metric="ece", expect="lower"))
    assert verdict([rec("toy", "ece", "minillm", "kd", -0.1, -0.15, -0.05)], low)["verdict"] == "supported"


@pytest.mark.parametrize("expect, margin, ci, expected", [
    ("equivalent", 1.0, (-0.6, 0.4), "supported"),  # C7-style: CI inside ±1
    ("equivalent", 1.0, (-1.5, 0.4), "inconclusive"),  # crosses the margin
    ("equivalent", 1.0, (1.2, 3.0), "contradicted"),  # entirely outside
    ("at_least", 1.0, (-0.8, 2.0), "supported"),  # non-inferior within 1
    ("at_least", 1.0, (-1.8, 2.0), "inconclusive"),
    ("at_least", 1.0, (-4.0, -1.5), "contradicted"),
    ("at_most", 0.5, (-3.0, 0.3), "supported"),
    ("at_most", 0.5, (0.6, 0.9), "contradicted"),
])
def test_margin_requirements(expect, margin, ci, expected):
    c = claim(dict(method="minillm", other="sft", metric="dist4", expect=expect, margin=margin))
    lo, hi = ci
    assert verdict([rec("dolly", "dist4", "minillm", "sft", (lo + hi) / 2, lo, hi)], c)["verdict"] == expected


def test_vs_metric_compares_two_deltas_by_ci_overlap():
    # C4's length part: delta at 16 tokens below delta at 8 (the gap grows)
    c = claim(dict(method="minillm", other="kd", metric="exposure_bias@16", vs_metric="exposure_bias@8",
                   expect="lower"))
    at8 = rec("toy", "exposure_bias@8", "minillm", "kd", -1, -2, 0)
    grows = rec("toy", "exposure_bias@16", "minillm", "kd", -5, -7, -3)
    shrinks = rec("toy", "exposure_bias@16", "minillm", "kd", 2, 1, 3)
    overlap = rec("toy", "exposure_bias@16", "minillm", "kd", -2, -3, -0.5)
    assert verdict([at8, grows], c)["verdict"] == "supported"
    assert verdict([at8, shrinks], c)["verdict"] == "contradicted"
    assert verdict([at8, overlap], c)["verdict"] == "inconclusive"
    assert verdict([grows], c)["verdict"] == "not measured"


def test_optional_requirements_can_only_contradict():
    c5 = CLAIMS.get("C5")
    beats = [rec("toy", "validity", m, o, 4, 2, 6) for m in ("single_step", "ranking") for o in ("sft", "seqkd")]
    loses = [rec("toy", "validity", m, "minillm", -0.5, -1.5, 0.5) for m in ("single_step", "ranking")]
    assert verdict(beats + loses, c5)["verdict"] == "supported"  # the loss need not be significant
    assert verdict(beats, c5)["verdict"] == "supported"  # nor measured
    better = [rec("toy", "validity", m, "minillm", 3, 1, 5) for m in ("single_step", "ranking")]
    assert verdict(beats + better, c5)["verdict"] == "contradicted"


def test_partly_measured_claims_are_inconclusive_and_unmeasured_ones_say_why():
    c1 = CLAIMS.get("C1")
    rouge = [rec("dolly", "rouge_l", "minillm", o, 3, 1, 5) for o in ("sft", "kd", "seqkd")]
    f = verdict(rouge, c1)
    assert f["verdict"] == "inconclusive" and "judge not measured" in f["reason"]
    judge = [rec("dolly", "judge", "minillm", o, 3, 1, 5) for o in ("sft", "kd", "seqkd")]
    assert verdict(rouge + judge, c1)["verdict"] == "supported"
    # per task: a second task where minillm loses to kd on Rouge-L contradicts the claim
    vicuna = [rec("vicuna", m, "minillm", o, 3, 1, 5) for m in ("rouge_l", "judge") for o in ("sft", "seqkd")]
    vicuna += [rec("vicuna", "judge", "minillm", "kd", 3, 1, 5), rec("vicuna", "rouge_l", "minillm", "kd", -2, -3, -1)]
    assert verdict(rouge + judge + vicuna, c1)["verdict"] == "contradicted"
    f = verdict([rec("dolly", "rouge_l", "sft", "kd", 1, -1, 3)], CLAIMS.get("C6"))
    assert f["verdict"] == "not measured" and "minillm-no-single-step" in f["reason"]


def test_task_lists_and_primary_metrics():
    # C3 names sst2, boolq, toy: a run with only toy is judged on toy; C6 uses validity on toy and
    # Rouge-L elsewhere
    c3 = CLAIMS.get("C3")
    toy = [rec("toy", m, "minillm", o, d, d - 0.5 * abs(d), d + 0.5 * abs(d))
           for o in ("kd", "seqkd") for m, d in (("ece", -0.1), ("cls_acc", 4.0))]
    f = verdict(toy + [rec("dolly", "ece", "minillm", "kd", 1, 0.5, 1.5)], c3)  # dolly is not a C3 task
    assert f["verdict"] == "supported" and {e["task"] for e in f["evidence"]} == {"toy"}
    c6 = CLAIMS.get("C6")
    abl = ["minillm-no-single-step", "minillm-no-teacher-mix", "minillm-no-length-norm"]
    runs = [rec("toy", "validity", "minillm", a, 2, 1, 3) for a in abl]
    runs += [rec("dolly", "rouge_l", "minillm", a, 2, 1, 3) for a in abl]
    runs += [rec("dolly", "validity", "minillm", a, -2, -3, -1) for a in abl]  # not dolly's primary metric
    f = verdict(runs, c6)
    assert f["verdict"] == "supported" and {(e["task"], e["metric"]) for e in f["evidence"]} == {
        ("toy", "validity"), ("dolly", "rouge_l")}


# ------------------------------------------------------------------------------------------------
# students


def test_every_student_must_hold_for_c9():
    c9 = CLAIMS.get("C9")
    one = [rec("toy", "validity", "minillm", "sft", 3, 1, 5, student="small")]
    assert verdict(one, c9)["verdict"] == "not measured"  # needs 2 students
    two = one + [rec("toy", "validity", "minillm", "sft", 2, 1, 3, student="big")]
    assert verdict(two, c9)["verdict"] == "supported"
    mixed = one + [rec("toy", "validity", "minillm", "sft", -2, -3, -1, student="big")]
    f = verdict(mixed, c9)
    assert f["verdict"] == "contradicted" and "big" in f["reason"]


def test_c10_pairs_a_student_with_the_next_larger_one():
    c10, sizes = CLAIMS.get("C10"), {"s120m": 120e6, "s340m": 340e6, "s760m": 760e6}
    models = [f"{s}/{m}" for s in sizes for m in ("sft", "minillm")]
    assert needed_pairs(models, ["C10"], student_sizes=sizes) == [("s120m/minillm", "s340m/sft"),
                                                                   ("s340m/minillm", "s760m/sft")]
    within = [rec("dolly", "rouge_l", "minillm", "sft", 2, 1, 3, student=s) for s in sizes]
    cross = [rec("dolly", "rouge_l", "minillm", "sft", -0.4, -0.9, 0.2, student="s120m", baseline_student="s340m"),
             rec("dolly", "rouge_l", "minillm", "sft", 0.1, -0.5, 0.8, student="s340m", baseline_student="s760m")]
    f = verdict(within + cross, c10, student_sizes=sizes)
    assert f["verdict"] == "supported", f["reason"]
    assert [round(e["size_ratio"], 2) for e in f["evidence"]] == [2.83, 2.24]
    assert verdict(within + cross, c10)["verdict"] == "not measured"  # no sizes: no "larger"
    worse = [dict(cross[0], delta=-3, ci_low=-4, ci_high=-2, significant=True), cross[1]]
    assert verdict(within + worse, c10, student_sizes=sizes)["verdict"] == "contradicted"


# ------------------------------------------------------------------------------------------------
# registry and output


def test_the_paper_claims_are_registered_as_data():
    ids = [f"C{i}" for i in range(1, 11)]
    assert set(ids) <= set(CLAIMS.names())
    assert [f["id"] for f in evaluate_claims([]) if f["id"] in ids] == ids  # natural order
    assert all(f["verdict"] == "not measured" for f in evaluate_claims([], ids))
    assert len(CLAIMS.get("C1").requirements) == 6  # minillm x {sft, kd, seqkd} x {rouge_l, judge}
    assert {r.expect for r in CLAIMS.get("C7").requirements} == {"equivalent"}
    assert CLAIMS.get("C9").min_students == CLAIMS.get("C10").min_students == 2
    with pytest.raises(ValueError, match="expect"):
        Requirement(method="a", other="b", metric="m", expect="better")


def test_markdown_and_json_forms():
    recs = [rec("toy", "mode_coverage", "minillm", "sft", -4.0, -6.0, -2.0),
            rec("toy", "dist4", "minillm", "sft", math.nan, math.nan, math.nan, significant=False)]
    findings = evaluate_claims(recs, ["C7", "C8"])
    md = findings_markdown(findings)
    assert "| C8: " in md and "**supported**" in md and "-4.00 [-6.00, -2.00]" in md
    data = findings_json(findings)
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)[1]["verdict"] == "supported"
    ev = data[0]["evidence"][0]  # a comparison without a value (NaN) is not measured, not judged
    assert ev["status"] == "missing" and "no value for the comparison" in ev["reason"]
