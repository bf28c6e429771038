"""One rank of tests/engine/test_ranks_agree.py (kdbench.ranks under 2 real processes); not a test
module itself. Launched like torchrun launches it (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

    python tests/ranks_worker.py OUT.json

Each case fails on one rank only and records what every rank raised; a rank that hung would stop
the run at the test's timeout. Rank 0 writes every rank's record to OUT.json.
"""
from __future__ import annotations

import json
import os
import sys

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _outcome(fn) -> str:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the point: what each rank raised
        return f"{type(e).__name__}: {e}"
    return "ok"


def main(out: str) -> None:
    from ddp_worker import global_batches, tiny_model
    from kdbench import ranks
    from kdbench.config import TrainConfig
    from kdbench.method import cross_entropy
    from kdbench.row_sampling import sample_rows
    from kdbench.sampling import SamplingConfig
    from kdbench.trainer import LossOutput, Trainer, get_accelerator

    get_accelerator("cpu")
    r = ranks.rank()
    rec: dict = {"rank": r, "world": ranks.world()}

    # a non-finite loss on rank 1's rows only, at step 2: both ranks stop at step 2
    model = tiny_model()

    def loss_fn(batch):
        loss = cross_entropy(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch.labels)
        if r == 1 and len(trainer.history) == 1:
            loss = loss * float("nan")
        return LossOutput(loss)

    trainer = Trainer(TrainConfig(steps=4, batch_size=8, lr=1e-2, warmup_steps=0, log_every=1), None, device="cpu",
                      progress=False)
    rec["fit"] = _outcome(lambda: trainer.fit(model, loss_fn, global_batches()))
    rec["fit_steps"] = len(trainer.history)

    # the batch iterator (a rollout round, a dev loss: outside the loss's flag) fails on rank 1 at step 3
    def batches_failing():
        for i, b in enumerate(global_batches()):
            if r == 1 and i == 2:
                raise RuntimeError("round broken")
            yield b

    model2 = tiny_model()
    trainer2 = Trainer(TrainConfig(steps=4, batch_size=8, lr=1e-2, warmup_steps=0, log_every=1), None, device="cpu",
                       progress=False)
    rec["fit_batches"] = _outcome(lambda: trainer2.fit(model2, lambda b: LossOutput(cross_entropy(
        model2(input_ids=b.input_ids, attention_mask=b.attention_mask).logits, b.labels)), batches_failing()))
    rec["fit_batches_steps"] = len(trainer2.history)
    # rows split into shares, every rank gets every share in row order
    rec["map_rows"] = ranks.map_rows(7, lambda rows: [x * 10 + r for x in rows])

    def fail_on(rank_: int):
        def fn():
            if ranks.launched_rank() == rank_:
                raise ValueError(f"broken on {rank_}")
            return "value"
        return fn

    rec["on_main"] = _outcome(lambda: ranks.on_main(fail_on(0), "a stage"))
    rec["on_main_value"] = ranks.on_main(lambda: f"from {ranks.launched_rank()}")
    rec["all_ok"] = _outcome(lambda: ranks.all_ok(fail_on(1), "loading"))
    rec["counts"] = ranks.sum_counts({"tokens": r + 1, "rollouts": 5}, frozenset({"rollouts"}))

    # each rank samples its share; every rank holds the rows one process draws
    gpt = tiny_model(seed=3).eval()
    prompts = [[2 + (i * 5) % 20, 3 + i % 7][: 1 + i % 2] for i in range(7)]
    cfg = SamplingConfig(max_new_tokens=6)
    shared, mine = sample_rows(gpt, prompts, cfg, 1, 0, seed=11, batch_size=2)
    with ranks.solo():
        alone, _ = sample_rows(gpt, prompts, cfg, 1, 0, seed=11, batch_size=2)
    rec["sampled_same"] = shared.response_ids == alone.response_ids
    rec["own_tokens"] = mine
    rec["all_tokens"] = shared.n_generated
    rec["sampling_error"] = _outcome(lambda: sample_rows(gpt, prompts if r == 0 else [[999]] * 7, cfg, 1, 0, 11))
    ranks.barrier()  # nothing above left a collective half done
    everyone = ranks.gather(rec)
    if r == 0:
        with open(out, "w") as f:
            json.dump(everyone, f)


if __name__ == "__main__":
    main(sys.argv[1])
