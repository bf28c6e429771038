"""A causal LM's forward split into its body (final hidden states) and its lm_head, for the chunked
losses of kdbench/chunked.py. Models whose logits are more than ``lm_head(hidden)`` (logit scaling or
soft-capping) or whose head is not a plain Linear (e.g. a LoRA-wrapped lm_head) are not split: the
caller then materialises the logits as before.

Forwards that need no gradient (the teacher's, evaluation's) can also run `trimmed`: the batch's rows
grouped by length and each group cut to its longest row, so padding is not computed: Dolly responses run
from a few tokens to the 256-token limit, and a teacher forward then costs about the real tokens only.
Gradient forwards (the student's) keep one call: several forwards per backward would not suit DDP.
No-gradient forwards of the architectures kdbench.lean covers call the weights directly (lean/forward.py)."""
from __future__ import annotations

import torch

from .chunked import LazyLogits, rows_per_chunk
from .config import TrainConfig
from .weights import has_sharded_weights, weights

# config attributes that post-process lm_head's output in some architectures (Gemma 2/3, Cohere, ...)
_POSTPROCESS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


def split_model(model):
    """(body, head) of a causal LM, or None when its logits are not exactly head(body(x))."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    body = getattr(inner, "base_model", None)
    if type(head) is not torch.nn.Linear or body is None or body is inner:
        return None
    cfg = getattr(inner, "config", None)
    if any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in _POSTPROCESS):
        return None
    return body, head


# A forward call's fixed cost, in FLOPs: ~1 ms of Python and dispatch, at ~1e11 FLOP/s on a CPU and ~5e13 on
# an accelerator. Divided by a token's cost (2 x parameters) it says how many tokens of padding a call is
# worth: ~60 for the toy teacher, under 1 for SmolLM2-135M on a CPU, ~190 on a GPU.
_CALL_FLOPS = {"cpu": 1e8}
_CALL_FLOPS_ACCELERATOR = 5e10


def call_cost_tokens(model) -> float:
    """A forward call's fixed cost in tokens of `model` (see _CALL_FLOPS)."""
    params = list({id(p): p for p in weights(model)}.values())
    n = sum(p.numel() for p in params) or 1
    dev = params[0].device.type if params else "cpu"
    return _CALL_FLOPS.get(dev, _CALL_FLOPS_ACCELERATOR) / (2 * n)


def length_groups(lengths: list[int], call_cost: float) -> list[list[int]]:
    """Row indices grouped to cut padding: rows sorted by length and cut into consecutive runs that
    minimise sum(rows x longest row) + call_cost x runs (exact, by dynamic programming over the cuts)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ls = [lengths[i] for i in order]
    n = len(ls)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):  # best[j]: the first j rows (sorted); the last run is rows i..j-1
        for i in range(j):
            c = best[i] + (j - i) * ls[j - 1] + call_cost
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]: j])
        j = cut[j]
    return groups[::-1]


def one_call_only(model) -> bool:
    """A model whose forward must stay one call: sharded weights or an engine wrapper (each forward is a
    collective every rank must match), or RoPE that rescales with the sequence length (a shorter call
    would change its angles)."""
    if any(k in type(model).__name__ for k in ("FullyShardedDataParallel", "DeepSpeedEngine", "DistributedDataParallel")):
        return True
    if has_sharded_weights(model):
        return True
    cfg = getattr(model, "config", None)
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
    return isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in ("dynamic", "longrope")


def trimmed(fn, input_ids: torch.Tensor, attention_mask: torch.Tensor, call_cost: float) -> torch.Tensor:
    """fn(input_ids, attention_mask) -> [B, L, D], computed per length group (length_groups) on the rows
    cut to the group's longest row and put back in place: real positions as one call gives them, positions
    past a group's longest row zeros. Only for right-padded rows (a prefix of ones per row, as
    kdbench.data.collate builds): otherwise one call."""
    B, L = attention_mask.shape
    lengths = attention_mask.sum(1)
    prefix = (torch.arange(L, device=attention_mask.device)[None] < lengths[:, None]).to(attention_mask.dtype)
    if B < 2 or not torch.equal(prefix, attention_mask):
        return fn(input_ids, attention_mask)
    groups = length_groups(lengths.tolist(), call_cost)
    if len(groups) == 1 and int(lengths.max()) == L:
        return fn(input_ids, attention_mask)
    out = None
    for g in groups:
        idx = torch.tensor(g, device=input_ids.device)
        n = max(1, int(lengths[idx].max()))
        part = fn(input_ids[idx, :n], attention_mask[idx, :n])
        if out is None:
            out = part.new_zeros((B, L, part.shape[-1]))
        out[idx, :n] = part
    return out


def _lean(model, logits: bool):
    """kdbench.lean's whole-sequence forward for `model` when no gradient is recorded and it covers the model."""
    from .lean.forward import lean_forward  # here: kdbench.lean imports this module

    return lean_forward(model, logits)


def _lean_or(model, logits: bool, fallback):
    """fn(ids, mask): the lean forward where it covers the call (the model, no gradient, right padding), else
    `fallback(ids, mask)` (transformers' forward)."""
    lean = _lean(model, logits)

    def run(ids, mask):
        out = lean(ids, mask) if lean is not None else None
        return out if out is not None else fallback(ids, mask)
    return run


def lazy_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 vocab_size: int | None, trim: bool = False) -> LazyLogits | None:
    """The model's logits as LazyLogits (hidden states + head), or None if it cannot be split. `trim`: the
    body runs per length group (`trimmed`), when no gradient is recorded and not `one_call_only(model)`."""
    parts = split_model(model)
    if parts is None:
        return None
    body, head = parts
    run = _lean_or(model, False, lambda ids, mask: body(input_ids=ids, attention_mask=mask).last_hidden_state)

    trim = trim and not torch.is_grad_enabled() and not one_call_only(model)
    hidden = trimmed(run, input_ids, attention_mask, call_cost_tokens(model)) if trim else run(input_ids, attention_mask)
    return LazyLogits(hidden, head.weight, head.bias, vocab_size)


def dense_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, trim: bool = False) -> torch.Tensor:
    """model(...).logits, per length group when `trim` and no gradient is recorded (see lazy_forward)."""
    run = _lean_or(model, True, lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits)
    if trim and not torch.is_grad_enabled() and not one_call_only(model):
        return trimmed(run, input_ids, attention_mask, call_cost_tokens(model))
    return run(input_ids, attention_mask)


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   vocab_size: int | None, trim: bool = False) -> LazyLogits:
    """The model's logits as LazyLogits: split when it can be (hidden states + head), else the
    dense logits cut to the real vocabulary. Scoring code then takes only the rows it needs, a
    chunk at a time, whichever the model is."""
    lazy = lazy_forward(model, input_ids, attention_mask, vocab_size, trim)
    if lazy is not None:
        return lazy
    logits = dense_logits(model, input_ids, attention_mask, trim)
    if vocab_size is not None and logits.shape[-1] > vocab_size:  # padded embedding rows are not tokens
        logits = logits[..., :vocab_size]
    return LazyLogits.dense(logits)


def eval_chunk_rows(vocab: int) -> int:
    """Rows per lm_head chunk when scoring for a metric: the training default's element budget
    (TrainConfig.loss_chunk_tokens x loss_chunk_elements), so an evaluation's [rows, V] temporaries
    stay at tens of MB whatever the vocabulary and the batch."""
    return rows_per_chunk(vocab, TrainConfig.loss_chunk_tokens, TrainConfig.loss_chunk_elements)


def model_vocab(out: LazyLogits) -> int:
    """The vocabulary width of `out`'s logits (its head's rows, cut to vocab_size)."""
    if out.logits is not None:
        return int(out.logits.shape[-1])
    rows = int(out.weight.shape[0])
    return min(rows, out.vocab_size) if out.vocab_size else rows
