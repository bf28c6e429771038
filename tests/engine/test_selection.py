"""Checkpoint selection on dev: the model a cell keeps is the best-scoring step's, exactly, including
after an interrupted run resumes; the dev curve and chosen step are recorded."""
from __future__ import annotations

import itertools

import pytest
import torch
from fixtures import tiny_gpt2

from kdbench.config import TrainConfig
from kdbench.data import IGNORE, collate
from kdbench.errors import ConfigError
from kdbench.selection import DevSelector, SelectConfig
from kdbench.trainer import LossOutput, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch():
    g = torch.Generator().manual_seed(0)
    return collate([(torch.randint(2, 24, (3,), generator=g).tolist(), torch.randint(2, 24, (5,), generator=g).tolist())
                    for _ in range(4)], pad_id=0)


def _loss(model):
    def f(b):
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        return LossOutput(torch.nn.functional.cross_entropy(logits.flatten(0, 1), b.labels.flatten(),
                                                            ignore_index=IGNORE))
    return f


def _cfg(steps):
    return TrainConfig(steps=steps, batch_size=4, lr=1e-2, log_every=2, warmup_steps=0, schedule="constant",
                       checkpoint_every=2)


def _train(steps, selector=None, run_dir=None):
    model = tiny_gpt2(0)
    state = {}
    if selector is not None:
        selector.model = model
        state = {"selection": selector.state}
    Trainer(_cfg(steps), run_dir, progress=False).fit(model, _loss(model), itertools.repeat(_batch()),
                                                      on_step=selector.on_step if selector else None, state=state)
    if selector is not None:
        return model, selector.finish(model, steps)
    return model, None


def _scores(seq):
    it = iter(seq)
    return lambda model: next(it)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_the_kept_model_is_the_best_dev_step_not_the_last():
    sel = DevSelector(2, "validity", True, _scores([10.0, 30.0, 20.0]))  # steps 2, 4, 6: best at 4
    model, info = _train(6, sel)
    at4, _ = _train(4)
    last, _ = _train(6)
    assert info["selected_step"] == 4 and info["selected_dev"] == 30.0
    assert [p["step"] for p in info["dev_curve"]] == [2, 4, 6]
    assert _same(model, at4) and not _same(model, last)


def test_lower_is_better_and_ties_keep_the_earlier_step():
    sel = DevSelector(2, "ece", False, _scores([0.3, 0.1, 0.1]))
    _, info = _train(6, sel)
    assert info["selected_step"] == 4


def test_the_last_step_is_scored_when_not_on_the_grid():
    sel = DevSelector(4, "validity", True, _scores([1.0, 5.0]))  # steps 4 and the final 6
    model, info = _train(6, sel)
    last, _ = _train(6)
    assert info["selected_step"] == 6 and _same(model, last)


def test_selection_survives_an_interrupted_run(tmp_path):
    """Stop after step 4 (checkpoint), resume to 6: the same choice and weights as one run."""
    # the best step (2) is scored before the interruption: only a restored selection state keeps it
    ref, ref_info = _train(6, DevSelector(2, "validity", True, _scores([50.0, 30.0, 20.0])))
    run_dir = tmp_path / "cell"
    run_dir.mkdir()
    first = DevSelector(2, "validity", True, _scores([50.0, 30.0]))
    model = tiny_gpt2(0)
    first.model = model
    t = Trainer(_cfg(6), run_dir, progress=False)

    class Stop(Exception):
        pass

    def hook(step, rec):
        first.on_step(step, rec)
        if step == 4:
            raise Stop
    with pytest.raises(Stop):
        t.fit(model, _loss(model), itertools.repeat(_batch()), on_step=hook, state={"selection": first.state})
    # killed during step 4's hook, before its checkpoint: the run resumes from step 2's checkpoint,
    # whose selection state (best 50.0 at step 2, with its weights) comes back with it; steps 4 and 6
    # are scored again
    resumed = DevSelector(2, "validity", True, _scores([30.0, 20.0]))
    model2 = tiny_gpt2(0)
    resumed.model = model2
    Trainer(_cfg(6), run_dir, progress=False).fit(model2, _loss(model2), itertools.repeat(_batch()),
                                                  on_step=resumed.on_step, state={"selection": resumed.state})
    info = resumed.finish(model2, 6)
    assert info["selected_step"] == ref_info["selected_step"] == 2
    assert _same(model2, ref)


def test_select_config_is_validated():
    with pytest.raises(ConfigError, match="select.every"):
        SelectConfig(every=-1)
