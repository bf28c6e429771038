"""kdbench.lean.forward: a no-gradient whole-sequence forward equal to transformers' at every real position of
right-padded rows, used by the teacher's and the metrics' forwards (kdbench.hidden), and never where it
does not hold (gradients, left padding, models the lean decoder does not cover)."""
from __future__ import annotations

import pytest
import torch

from kdbench import hidden
from kdbench.lean import forward as lean_fwd
from kdbench.lean.forward import is_right_padded, lean_forward

from test_lean import VARIANTS, V, _randomise_biases

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTHS = [7, 3, 9, 1, 9]


def _right_padded(seed=0):
    g = torch.Generator().manual_seed(seed)
    L = max(LENGTHS)
    ids = torch.randint(2, V, (len(LENGTHS), L), generator=g)
    mask = (torch.arange(L)[None] < torch.tensor(LENGTHS)[:, None]).long()
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_and_hidden_states_equal_transformers_at_real_positions(variant):
    model = _randomise_biases(VARIANTS[variant]())
    ids, mask = _right_padded()
    real = mask.bool()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        lean_logits = lean_forward(model, logits=True)(ids, mask)
        lean_hidden = lean_forward(model, logits=False)(ids, mask)
        body_hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert float(ref.logits[real].std()) > 0.5
    torch.testing.assert_close(lean_logits[real], ref.logits[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lean_hidden[real], body_hidden[real], rtol=1e-5, atol=1e-5)


def test_hidden_forwards_take_the_lean_path_only_without_gradient(monkeypatch):
    model = _randomise_biases(VARIANTS["llama-gqa"]())
    ids, mask = _right_padded(1)
    calls = []
    real_run = lean_fwd.lean_forward

    def counting(m, logits):
        fn = real_run(m, logits)
        if fn is None:
            return None

        def run(i, a):
            out = fn(i, a)
            calls.append(out is not None)
            return out
        return run

    monkeypatch.setattr(lean_fwd, "lean_forward", counting)
    with torch.no_grad():
        lazy = hidden.lazy_forward(model, ids, mask, V, trim=True)
        dense = hidden.dense_logits(model, ids, mask, trim=True)
        ref = model(input_ids=ids, attention_mask=mask).logits
    assert calls and all(calls)  # every group of the trimmed forward ran lean
    real = mask.bool()
    torch.testing.assert_close(lazy.full()[real], ref[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense[real], ref[real], rtol=1e-5, atol=1e-5)
    calls.clear()
    out = hidden.lazy_forward(model, ids, mask, V)  # gradient recorded: transformers' forward
    assert not calls and out.hidden.requires_grad


def test_left_padding_and_uncovered_models_keep_transformers_forward():
    model = VARIANTS["gpt2"]()
    ids, mask = _right_padded(2)
    left = mask.flip(-1)
    assert is_right_padded(mask) and not is_right_padded(left)
    assert is_right_padded(torch.ones(2, 4, dtype=torch.long))
    with torch.no_grad():
        assert lean_forward(model, logits=True)(ids, left) is None  # the caller runs transformers
        out = hidden.dense_logits(model, ids.flip(-1), left)
        ref = model(input_ids=ids.flip(-1), attention_mask=left).logits
        torch.testing.assert_close(out, ref)
        model.train()  # dropout active: not covered
        assert lean_forward(model, logits=True) is None
    assert lean_forward(model.eval(), logits=True) is None  # gradient recorded here
