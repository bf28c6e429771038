"""Per-row seeded sampling (kdbench/row_sampling.py): a row's tokens depend on its own seed only,
not on the rows sampled with it (what lets ranks split the rows), and the draws follow the model's
distribution. The same sampler under two real processes: tests/e2e/test_ranks.py and test_ranks_worker."""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench.row_sampling import RowGenerators, _sample_rows, row_seed, sample_rows
from kdbench.sampling import SamplingConfig

from test_sampling import EOS, PAD, V, FixedLM  # noqa: E402 (tests/engine on sys.path: rootdir conftest)

pytestmark = pytest.mark.usefixtures("one_thread")


def _gpt2(seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=12, n_positions=40, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0,
                                      embd_pdrop=0, attn_pdrop=0, bos_token_id=EOS, eos_token_id=EOS,
                                      pad_token_id=PAD)).eval()


PROMPTS = [[2 + (i * 3 + j) % 9 for j in range(1 + i % 4)] for i in range(10)]  # lengths 1..4


def test_a_rows_tokens_do_not_depend_on_the_rows_sampled_with_it():
    model, cfg = _gpt2(), SamplingConfig(max_new_tokens=8)
    whole, n = sample_rows(model, PROMPTS, cfg, EOS, PAD, seed=5, batch_size=4)
    assert n == whole.n_generated
    # the rows split as two ranks split them, each half in other batches and with other padding
    for rows in ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [9, 2, 7]):
        part = _sample_rows(model, PROMPTS, rows, cfg, EOS, PAD, 5, 3)
        assert part.response_ids == [whole.response_ids[i] for i in rows]
        assert part.prompt_ids == [PROMPTS[i] for i in rows]
    # the seed matters, and so does the row: two equal prompts draw differently
    other, _ = sample_rows(model, PROMPTS, cfg, EOS, PAD, seed=6, batch_size=4)
    assert other.response_ids != whole.response_ids
    same = sample_rows(model, [PROMPTS[0]] * 6, cfg, EOS, PAD, seed=5, batch_size=6)[0].response_ids
    assert len({tuple(r) for r in same}) > 1


def test_row_seeds_never_share_a_stream():
    seeds = {row_seed(s, r) for s in range(50) for r in range(50)}
    assert len(seeds) == 2500  # seed + row would collide: (s, r + 1) and (s + 1, r)
    assert row_seed(3, 4) == row_seed(3, 4) and 0 <= row_seed(3, 4) < 2 ** 63


def test_row_draws_follow_the_distribution_and_only_the_rows_asked():
    probs = torch.tensor([0.0, 0.0, 0.5, 0.25, 0.125, 0.125]).expand(4000, V)
    gens = RowGenerators([row_seed(0, i) for i in range(4000)])
    toks = gens.draw(probs)
    freq = torch.bincount(toks, minlength=V).float() / 4000
    # 4000 draws: std of a frequency <= 0.008; 4 std
    assert torch.allclose(freq, probs[0], atol=0.032), freq
    # tokens of zero probability (filtered by top-k / top-p, banned n-grams) are never drawn, also
    # around and after the others
    holes = torch.tensor([0.0, 0.3, 0.0, 0.0, 0.7, 0.0]).expand(4000, V)
    toks = RowGenerators([row_seed(1, i) for i in range(4000)]).draw(holes)
    assert set(toks.tolist()) == {1, 4}
    with pytest.raises(ValueError, match="nan"):
        RowGenerators([0]).draw(torch.tensor([[float("nan"), 1.0, 0, 0, 0, 0]]))
    # a masked draw consumes nothing of the other rows' streams (SKD draws the teacher only on rejects):
    # after it, row 1 of `a` draws what a fresh row 1 draws first; row 1 of `b`, which drew, does not
    flat = torch.full((2, 1000), 1e-3)
    a, b = RowGenerators([1, 2]), RowGenerators([1, 2])
    a.draw(flat, torch.tensor([True, False]))
    b.draw(flat, torch.tensor([True, True]))
    first = RowGenerators([1, 2]).draw(flat)
    a_next, b_next = a.draw(flat), b.draw(flat)
    assert a_next[1] == first[1] and b_next[1] != first[1]
    assert a_next[0] == b_next[0] != first[0]


def test_a_rows_uniforms_are_its_generators_stream_in_order():
    """RowGenerators draws each row's uniforms CHUNK at a time: torch.rand(n) must equal n scalar draws."""
    for seed in (0, row_seed(3, 7)):
        g, h = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        n = 3 * RowGenerators.CHUNK + 5
        scalars = torch.tensor([float(torch.rand((), dtype=torch.float64, generator=g)) for _ in range(n)],
                               dtype=torch.float64)
        assert torch.equal(torch.rand(n, dtype=torch.float64, generator=h), scalars)
    # and across chunk refills the k-th draw of a row is the k-th number of its stream
    gens = RowGenerators([11])
    ref = torch.rand(2 * RowGenerators.CHUNK + 3, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    cdf_probe = torch.full((1, 4096), 1 / 4096)  # token = floor(u * 4096) (up to the cdf's rounding)
    toks = [int(gens.draw(cdf_probe)) for _ in range(ref.numel())]
    assert toks == [int(u * 4096) for u in ref.tolist()]
    # the same with masked draws in between (per-row counts): each row still reads its own stream in order
    gens = RowGenerators([11, 12])
    refs = [torch.rand(3 * RowGenerators.CHUNK, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
            for s in (11, 12)]
    got: list[list[int]] = [[], []]
    for k in range(2 * RowGenerators.CHUNK + 9):
        rows = torch.tensor([True, k % 3 != 1]) if k > 5 else None  # plain draws first, then masked ones
        out = gens.draw(cdf_probe.expand(2, -1), rows).tolist()
        for r in range(2):
            if rows is None or rows[r]:
                got[r].append(out[r])
    for r in range(2):
        assert got[r] == [int(u * 4096) for u in refs[r][: len(got[r])].tolist()], r


def test_a_draw_at_the_total_takes_the_last_token_of_positive_probability(monkeypatch):
    """The guard for u x total reaching the total (no cdf entry exceeds it; u = 1 stands in for a product that
    rounds up): the draw falls on the last token of positive probability, never on the zero-probability
    tokens after it."""
    gens = RowGenerators([0, 1])
    monkeypatch.setattr(gens, "_next_uniforms", lambda take: torch.tensor([1.0, 0.5], dtype=torch.float64))
    probs = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    assert gens.draw(probs).tolist() == [2, 2]  # row 1: u x total = 1.5 falls in token 2's step
