"""A checkpoint resumed by another number of processes (kdbench/train_state.regroup): the cost
counters of the steps before it are counted once in the cell's sum over ranks, and other states
come from rank 0. And which methods may read the top-k teacher cache."""
from __future__ import annotations

import pytest

from kdbench.method import make_method
from kdbench.plugins import load_plugins
from kdbench.train_state import regroup

load_plugins()


def _rank(tokens, gen, sel):
    return {"extra": {"counters": {"student_tokens": tokens, "generated_tokens": gen}, "selection": sel},
            "rng": {"torch": f"rng{tokens}"}}


def test_two_process_checkpoint_resumed_on_one_and_on_three():
    own = [_rank(10, 4, {"best": 1}), _rank(7, 2, {"best": 1})]
    saved = {"extra": own[0]["extra"], "rng": own[0]["rng"], "ranks": own}
    one = regroup(own, saved, rank=0)  # 2 -> 1: rank 1's counts are not lost
    assert one["extra"]["counters"] == {"student_tokens": 17, "generated_tokens": 6}
    assert one["extra"]["selection"] == {"best": 1} and one["rng"] == own[0]["rng"]
    three = [regroup(own, saved, rank=r) for r in range(3)]  # 2 -> 3: summed over ranks, still 17 once
    assert sum(t["extra"]["counters"].get("student_tokens", 0) for t in three) == 17
    assert all(t["extra"]["selection"] == {"best": 1} for t in three)


def test_one_process_checkpoint_resumed_on_two():
    saved = {"extra": {"counters": {"student_tokens": 12}}, "rng": {"torch": "r"}, "ranks": []}
    parts = [regroup([], saved, rank=r) for r in range(2)]
    assert [p["extra"]["counters"] for p in parts] == [{"student_tokens": 12}, {}]  # not 24 after the sum


@pytest.mark.parametrize("name, overrides, reads", [
    ("kd", None, True), ("kd", {"temperature": 2.0}, False), ("seqkd", None, True), ("fkl", None, True),
    ("rkl", None, False), ("abkd", None, False), ("akl", None, False), ("taid", None, False),
    ("js", {"data": "gold"}, False), ("tvd", {"data": "gold"}, False), ("gkd", {"lmbda": 0.0}, False),
    ("distillm", None, False), ("minillm", None, False), ("sft", None, False)])
def test_only_forward_kl_at_temperature_1_reads_the_topk_cache(name, overrides, reads):
    # the cache's flat tail barely moves forward KL at T = 1; reverse KL, JS, alpha-beta, TAID and a
    # tempered teacher weight that tail differently (docs/teacher_cache.md): they get the live teacher
    assert make_method(name, overrides).reads_teacher_cache() is reads
