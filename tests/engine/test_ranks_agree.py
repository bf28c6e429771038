"""kdbench.ranks under two real CPU processes (gloo): work that fails on one rank fails on every
rank, with no rank left waiting in a collective; row-sampled shares gather to one process's rows;
cost counters add up. The worker is tests/ranks_worker.py; one launch covers every case."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from test_ddp import _free_port  # noqa: E402

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks") / "ranks.json"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "ranks_worker.py"), str(out)],
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                   "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "KDBENCH_NO_PROGRESS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:  # a rank waiting forever: the failure this guards against
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(logs)
    return json.loads(out.read_text())


def test_a_loss_failing_on_one_rank_stops_every_rank_at_that_step(ranks_out):
    r0, r1 = ranks_out
    assert r0["world"] == r1["world"] == 2
    assert r1["fit"].startswith("NonFiniteLossError") and "step 2" in r1["fit"]
    assert r0["fit"].startswith("RankFailedError") and "rank 1" in r0["fit"] and "step 2" in r0["fit"]
    assert r0["fit_steps"] == r1["fit_steps"] == 1


def test_work_of_rank_0_alone_and_of_every_rank_fails_everywhere(ranks_out):
    r0, r1 = ranks_out
    assert r0["on_main"] == "ValueError: broken on 0"
    assert r1["on_main"].startswith("RankFailedError: a stage failed on rank 0: ValueError: broken on 0")
    assert r0["on_main_value"] == r1["on_main_value"] == "from 0"
    assert r0["all_ok"].startswith("RankFailedError: loading failed on rank 1")
    assert r1["all_ok"] == "ValueError: broken on 1"


def test_shares_of_the_rows_gather_to_one_process_rows_and_counts_add_up(ranks_out):
    r0, r1 = ranks_out
    assert r0["sampled_same"] and r1["sampled_same"]
    assert r0["own_tokens"] + r1["own_tokens"] == r0["all_tokens"] == r1["all_tokens"]
    assert 0 < r0["own_tokens"] < r0["all_tokens"]
    assert r0["counts"] == r1["counts"] == {"tokens": 3, "rollouts": 5}
    # a sampler error on one rank (token id out of the vocabulary) reaches both
    assert r1["sampling_error"].startswith("IndexError") or "index" in r1["sampling_error"].lower()
    assert r0["sampling_error"].startswith("RankFailedError: sampling failed on rank 1")


def test_a_batch_failing_on_one_rank_stops_every_rank_and_rows_map_in_shares(ranks_out):
    # the batch (a rollout round) is drawn outside the loss's failure flag: it needs its own agreement
    r0, r1 = ranks_out
    assert r1["fit_batches"].startswith("RuntimeError: round broken")
    assert r0["fit_batches"].startswith("RankFailedError") and "rank 1" in r0["fit_batches"]
    assert r0["fit_batches_steps"] == r1["fit_batches_steps"] == 2
    # 7 rows over 2 ranks: rows 0-3 on rank 0, 4-6 on rank 1, gathered in order on both
    assert r0["map_rows"] == r1["map_rows"] == [[0, 10, 20, 30], [41, 51, 61]]
