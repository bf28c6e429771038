"""The whole benchmark under torchrun: two CPU processes (gloo) give the leaderboard of one process,
and a two-process run killed in the middle of a training resumes.

One micro benchmark (sft, kd, minillm: stages, an off-policy and an on-policy train cell, eval
cells; tests/micro_run.py) runs three times, each once, and every assertion reads those runs:
  - 2 processes, SIGKILLed by rank 0 right after minillm's first checkpoint (torchrun then stops
    the other rank), then the same command again, which resumes;
  - 1 process, the reference.

What "the same leaderboard" means here (docs/scaling.md):
  - rows whose models rank 0 builds alone (teacher, student base, the sft stage): identical;
  - every eval generation: identical (each prompt draws from its own generator, so which rank
    samples it does not matter; the models' weights agree closely enough that no token flips);
  - trained rows (kd, minillm): equal up to float summation order (gradients summed over ranks,
    amplified by Adam), |diff| <= 1e-4 * max(1, |value|) for every mean and CI bound.
Both with the defaults (grad_accum 1): two ranks split each batch as grad_accum 2 would, which
changes nothing for token-mean losses and, since `pt_share` (methods/minillm.py), for L_PT.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from micro_run import MICRO, env  # noqa: E402

# kd reads the teacher from the exact cache stage (the default preset's setting), built by rank 0 inside the
# training loop while the other rank waits; minillm scores its rollouts with the live teacher
ARGS = [*MICRO, "--methods", "sft,kd,minillm", "--set", "distill.teacher_cache=full"]
TOL = 1e-4  # relative (absolute below 1): float summation order over ranks, through Adam
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
pytestmark = pytest.mark.multiprocess


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun is not installed")
    base = tmp_path_factory.mktemp("ranks")
    two, one = base / "two", base / "one"
    micro = str(ROOT / "tests" / "micro_run.py")
    killed = _run([*TORCHRUN, micro, "ckpt:minillm:1", "--", *ARGS, "--out", str(two)])
    ckpt_left = (two / "cells" / "train" / "gpt2-toy-xs" / "minillm" / "checkpoint.pt").exists()
    stage_done = {p: p.stat().st_mtime_ns for p in (two / "cache").glob("*/DONE")}
    resumed = _run([*TORCHRUN, micro, "none", "--", *ARGS, "--out", str(two)])
    ref = _run([sys.executable, micro, "none", "--", *ARGS, "--out", str(one)])
    return {"two": two, "one": one, "killed": killed, "resumed": resumed, "ref": ref, "ckpt_left": ckpt_left,
            "stage_done": stage_done}


def _rows(out: Path) -> dict:
    return {(r["student"], r["method"], r["task"], r["metric"]): r
            for r in json.loads((out / "leaderboard.json").read_text())}


def test_a_killed_two_process_run_resumes_and_finishes(runs):
    assert runs["killed"].returncode != 0 and runs["ckpt_left"], runs["killed"].stderr[-3000:]
    assert runs["resumed"].returncode == 0, runs["resumed"].stderr[-5000:]
    assert runs["ref"].returncode == 0, runs["ref"].stderr[-5000:]
    log = runs["resumed"].stderr + runs["resumed"].stdout
    assert "resumed from step 2" in log  # minillm continued from its checkpoint, mid-round
    for p, mtime in runs["stage_done"].items():  # stages finished before the kill were not rebuilt
        assert p.stat().st_mtime_ns == mtime, p
    assert not list((runs["two"] / "cells").glob("**/error.json"))
    # rank 0 wrote the run's records alone, and says how many processes ran it
    assert json.loads((runs["two"] / "run_info.json").read_text())["processes"] == 2


def test_two_processes_give_the_leaderboard_of_one(runs):
    two, one = _rows(runs["two"]), _rows(runs["one"])
    assert two.keys() == one.keys()
    compared = 0
    for k, a in two.items():
        b = one[k]
        for f in ("mean", "ci_low", "ci_high"):
            if a[f] is None or b[f] is None:
                assert a[f] == b[f], (k, f)
                continue
            if k[1] in ("teacher", "student-base", "sft"):  # built by rank 0 alone: bit for bit
                assert a[f] == b[f], (k, f, a[f], b[f])
            else:
                assert abs(a[f] - b[f]) <= TOL * max(1.0, abs(b[f])), (k, f, a[f], b[f])
            compared += 1
    assert compared > 100


def test_sharded_evaluation_draws_the_generations_of_one_process(runs):
    cells = sorted(p.relative_to(runs["one"]) for p in runs["one"].glob("cells/eval/**/generations.jsonl"))
    assert len(cells) == 5  # teacher, base, sft, kd, minillm
    for c in cells:
        assert (runs["two"] / c).read_text() == (runs["one"] / c).read_text(), c


def test_cost_counters_are_summed_over_ranks(runs):
    def counters(out: Path, m: str) -> dict:
        return json.loads((out / "cells" / "train" / "gpt2-toy-xs" / m / "result.json").read_text())["counters"]

    two, one = counters(runs["two"], "minillm"), counters(runs["one"], "minillm")
    # each rank sampled half of every round: the sum is the one process's count, resume included
    assert two["generated_tokens"] == one["generated_tokens"] > 0
    assert two["rollouts"] == one["rollouts"]  # a count of the round, not per-rank work: rank 0's
    # every rank trains on its half of each batch: student forwards add up to about one process's
    # (the rollout scoring runs on every rank for the whole round, so a little more)
    kd2, kd1 = counters(runs["two"], "kd"), counters(runs["one"], "kd")
    assert kd2["student_tokens"] == kd1["student_tokens"]
