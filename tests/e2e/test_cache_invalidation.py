"""Changing one setting rebuilds exactly the work it affects, and nothing else.

One micro benchmark (sft, kd, seqkd; tests/micro_run.py) runs once; each case reruns it in a copy of
that run folder with one setting changed and compares the keys in every DONE marker (stages,
train cells, eval cells) before and after: a marker whose key changed, or a new stage folder, is
rebuilt work. A cache key missing a field shows here as a stale cell: "done, skipping".
"""
from __future__ import annotations

import json
import shutil

import pytest

import micro_run
from kdbench.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = micro_run.MICRO + ["--methods", "sft,kd,seqkd", "--set", "distill.steps=2", "--set", "eval.max_examples=3",
                          "--set", "eval.max_new_tokens=6"]


def done_keys(out) -> dict[str, str]:
    """Every finished unit of work -> its key (stages: the folder name is the key)."""
    keys = {}
    for marker in out.rglob("DONE"):
        rel = marker.parent.relative_to(out)
        if rel.parts[0] == "cache":
            keys[f"stage:{rel.parts[-1].rsplit('-', 1)[0]}:{rel.parts[-1]}"] = rel.parts[-1]
        else:
            done = json.loads(marker.read_text() or "{}")  # its key, and the stages it read (depends)
            keys["/".join(rel.parts[1:])] = json.dumps([done.get("key", ""), done.get("depends")])
    return keys


def rebuilt(before: dict, after: dict) -> set[str]:
    names = {k.split(":")[1] if k.startswith("stage:") else k for k in after if k not in before}
    names |= {k for k in after if k in before and after[k] != before[k] and not k.startswith("stage:")}
    return names


@pytest.fixture(scope="module", autouse=True)
def no_plots():
    """Plots off for this module only (they are most of a micro run's time; no test here reads them)."""
    import kdbench.report.plots as plots

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "make_plots", lambda run, plot_dir: ([], []))
        yield


@pytest.fixture(scope="module")
def base(tmp_path_factory, no_plots):
    out = tmp_path_factory.mktemp("cache-base") / "run"
    assert main(ARGS + ["--out", str(out)]) == 0
    return out, done_keys(out)


def kinds(names: set[str]) -> set[str]:
    """train/<student>/<method>..., eval/<group>/<model>/<task>/<seed> and stage names, shortened."""
    out = set()
    for n in names:
        parts = n.split("/")
        if parts[0] == "train":
            out.add(f"train:{parts[2]}")
        elif parts[0] == "eval":
            seed = parts[4].removeprefix("seed")
            out.add(f"eval:{parts[2]}" + ("" if seed == "10" else f"@{seed}"))
        else:
            out.add(n)
    return out


TEACHER_CHAIN = {"tokenizer", "teacher-base", "teacher-sft", "student-base", "student-sft"}
ALL_EVALS = {"eval:teacher", "eval:student-base", "eval:sft", "eval:kd", "eval:seqkd"}
DISTILLED = {"train:sft", "train:kd", "train:seqkd", "eval:sft", "eval:kd", "eval:seqkd"}
SEQKD = {"teacher-samples", "train:seqkd", "eval:seqkd"}  # SeqKD's samples use the eval decoding
# the teacher's labels on the prompts without gold (eval decoding too), read by teacher-guided methods
GUIDED = {"teacher-samples-unlabeled", "train:kd", "eval:kd"}
TEACHER_READERS = {"train:kd", "eval:kd", "train:seqkd", "eval:seqkd"}
EVERYTHING = TEACHER_CHAIN | ALL_EVALS | DISTILLED | SEQKD | GUIDED


@pytest.mark.parametrize("change, expected", [
    # a method's own config: that method's training and evaluation only
    (["--set", "method_config.kd.kd_ratio=0.3"], {"train:kd", "eval:kd"}),
    (["--set", "method_config.seqkd.kd_ratio=0.5"], {"train:seqkd", "eval:seqkd"}),
    # the distillation budget: the distilled students (sft's student is the SFT stage)
    (["--set", "distill.lr=0.001"], {"student-sft"} | DISTILLED),
    # decoding: every evaluation, and the teacher samples SeqKD trains on
    (["--set", "eval.top_p=0.9"], ALL_EVALS | SEQKD | GUIDED),
    # the prompts without gold off: the teacher-guided methods only (sft never saw them)
    (["--set", "use_unlabeled=false"], {"train:kd", "eval:kd", "train:seqkd", "eval:seqkd"}),
    # evaluation-only settings: every evaluation, no training
    (["--set", "eval.max_new_tokens=5"], ALL_EVALS),
    (["--set", "eval.metrics=[rouge_l]"], ALL_EVALS),
    # the teacher's SFT budget: the teacher and everything distilled from it
    (["--set", "teacher_sft.steps=5"], {"teacher-sft", "eval:teacher"} | SEQKD | GUIDED),
    # the student's pretraining: every student, not the teacher
    (["--set", "build.student_pretrain.lr=0.002"], {"student-base", "student-sft", "eval:student-base"} | DISTILLED),
    # one more evaluation seed: new eval cells, the seed-10 ones stay
    (["--set", "eval.seeds=[10,20]"], {e + "@20" for e in ALL_EVALS}),
    # the training data: everything trained on it (the test prompts are the same, the models not)
    (["--set", "task_options.toy.n_train=40"], EVERYTHING),
    # the teacher cache on: its stage, and the methods that read a teacher (not the SFT student)
    (["--set", "distill.teacher_cache=topk"], {"teacher-topk"} | TEACHER_READERS),
    # half precision: the teacher (and, on GPU, every training) computes in it
    (["--dtype", "bfloat16"], EVERYTHING),
])
def test_one_changed_setting_rebuilds_exactly_what_it_affects(base, tmp_path, change, expected):
    src, before = base
    out = tmp_path / "run"
    shutil.copytree(src, out)
    assert main(ARGS + ["--out", str(out)] + change) == 0
    got = kinds(rebuilt(before, done_keys(out)))
    assert got == expected, change


def test_unchanged_rerun_rebuilds_nothing(base, tmp_path):
    src, before = base
    out = tmp_path / "run"
    shutil.copytree(src, out)
    assert main(ARGS + ["--out", str(out)]) == 0
    assert done_keys(out) == before


def test_teacher_cache_stage_follows_k_and_the_teacher(base, tmp_path):
    """With the cache on: another k or another teacher rebuilds the cache stage and retrains its
    readers; the train cell records the stage it read, and that stage is the one on disk."""
    src, _ = base
    out = tmp_path / "run"
    shutil.copytree(src, out)
    on = ["--set", "distill.teacher_cache=topk", "--set", "distill.teacher_cache_k=16"]
    assert main(ARGS + ["--out", str(out)] + on) == 0
    before = done_keys(out)
    stages = sorted(p.name for p in (out / "cache").glob("teacher-topk-*"))
    assert len(stages) == 1  # kd's guided examples (seqkd, kd_ratio 0, never asks the teacher)
    kd_done = json.loads(next(out.rglob("train/*/kd/DONE")).read_text())
    assert kd_done["depends"]["teacher-cache"] == [stages[0].removeprefix("teacher-topk-")]
    assert main(ARGS + ["--out", str(out)] + on[:2] + ["--set", "distill.teacher_cache_k=8"]) == 0
    after_k = done_keys(out)
    assert kinds(rebuilt(before, after_k)) == {"teacher-topk"} | TEACHER_READERS
    # another teacher, on gold only (no unlabeled prompts, whose teacher samples would change the
    # example set anyway): the stage key itself must hold the teacher
    gold = on + ["--set", "use_unlabeled=false"]
    assert main(ARGS + ["--out", str(out)] + gold) == 0
    gold_keys = done_keys(out)
    assert main(ARGS + ["--out", str(out)] + gold + ["--set", "teacher_sft.steps=5"]) == 0
    got = kinds(rebuilt(gold_keys, done_keys(out)))
    assert {"teacher-sft", "teacher-topk", "train:kd"} <= got and "student-sft" not in got


def test_a_method_that_does_not_read_the_cache_gets_the_live_teacher_and_its_key_says_so(base, tmp_path):
    """rkl weights the teacher's tail by the student, which a top-k cache flattens (docs/teacher_cache.md):
    with the cache on, the runner trains it on the live teacher, builds no cache stage for it, and its
    key equals the cache-off key, so switching the cache off retrains nothing."""
    src, _ = base
    out = tmp_path / "run"
    shutil.copytree(src, out)
    rkl = ARGS[: ARGS.index("--methods")] + ["--methods", "rkl"] + ARGS[ARGS.index("--methods") + 2:]
    assert main(rkl + ["--out", str(out), "--set", "distill.teacher_cache=topk"]) == 0
    assert not list((out / "cache").glob("teacher-topk-*"))
    done = next(out.rglob("train/*/rkl/DONE"))
    assert "teacher-cache" not in (json.loads(done.read_text()).get("depends") or {})
    # the frozen train config holds the cache settings only when the cache is on (TrainConfig's key)
    assert "teacher_cache" not in json.loads((done.parent / "config.json").read_text())["train"]
    before = done_keys(out)
    assert main(rkl + ["--out", str(out)]) == 0
    assert not rebuilt(before, done_keys(out))
    # the exact full cache distorts nothing: rkl reads it, and its key and depends say so
    assert main(rkl + ["--out", str(out), "--set", "distill.teacher_cache=full"]) == 0
    assert kinds(rebuilt(before, done_keys(out))) == {"teacher-topk", "train:rkl", "eval:rkl"}
    done = json.loads(next(out.rglob("train/*/rkl/DONE")).read_text())
    assert len(done["depends"]["teacher-cache"]) >= 1
    assert json.loads((next(out.rglob("train/*/rkl/DONE")).parent / "config.json").read_text()
                      )["train"]["teacher_cache"] == "full"


def test_full_cache_above_its_vocabulary_limit_falls_back_to_the_live_teacher(base, tmp_path, monkeypatch):
    """The tiny preset's exact cache with a vocabulary too large for it (a real model under the default
    preset): every reader gets the live teacher, with a warning, and keys as if the cache were off, so the
    finished run is reused whole."""
    import kdbench.cells as cells

    src, before = base
    out = tmp_path / "run"
    shutil.copytree(src, out)
    monkeypatch.setattr(cells, "FULL_CACHE_MAX_VOCAB", 10)
    assert main(ARGS + ["--out", str(out), "--set", "distill.teacher_cache=full"]) == 0
    assert not rebuilt(before, done_keys(out)) and not list((out / "cache").glob("teacher-topk-*"))
    assert "train.teacher_cache=full is for vocabularies up to 10 tokens" in (out / "run.log").read_text()
