"""Aligning two tokenizations of the same text (cross-tokenizer distillation, e.g. methods/uld.py).

Every response token carries the UTF-8 byte span it covers in the response text. Two tokenizations
are aligned by a two-pointer walk over token ends (as TRL's GOLD does with byte offsets): the side
whose current token ends earlier advances, and a group closes when both sides end at the same byte.
Tokens left over at the end form one last group; a group empty on either side is dropped. Whitespace
a tokenizer does not emit (a word-level tokenizer's spaces) simply lies between spans and never
closes a group on its own.

Byte offsets, not decoded strings, so multi-byte characters split across tokens align (the decoding
approach broke there, TRL issue #4393).
"""
from __future__ import annotations

from typing import Sequence

from .data import encode_pair

Span = tuple[int, int]
Group = tuple[list[int], list[int]]


def _byte_index(text: str, char_index: int) -> int:
    return len(text[: max(0, char_index)].encode("utf-8"))


def encode_with_spans(tokenizer, prompt: str, response: str, max_length: int,
                      max_prompt_length: int) -> tuple[list[int], list[int], list[Span]]:
    """(prompt_ids, response_ids + [EOS], byte spans of the response's content tokens in `response`).

    Ids are exactly `kdbench.data.encode_pair`'s; spans come from the tokenizer's offset mapping of
    the same tokenisation (joint when the prompt's tokens are a prefix of the joint encoding, else
    the response alone), cut to the content tokens that survived truncation (EOS has no span)."""
    p_ids, r_ids = encode_pair(tokenizer, prompt, response, max_length, max_prompt_length)
    p_full = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    joint = tokenizer(prompt + response, add_special_tokens=False, return_offsets_mapping=True)
    if joint["input_ids"][: len(p_full)] == p_full:
        offsets, shift = joint["offset_mapping"][len(p_full):], len(prompt)
    else:
        offsets, shift = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"], 0
    n_content = len(r_ids) - (1 if r_ids and r_ids[-1] == tokenizer.eos_token_id else 0)
    spans = [(_byte_index(response, a - shift), _byte_index(response, b - shift)) for a, b in offsets]
    return p_ids, r_ids, spans[:n_content]


def align_spans(s_spans: Sequence[Span], t_spans: Sequence[Span]) -> list[Group]:
    """Groups of (student token indices, teacher token indices) covering the same bytes."""
    groups: list[Group] = []
    gs: list[int] = []
    gt: list[int] = []
    i = j = 0
    while i < len(s_spans) and j < len(t_spans):
        se, te = s_spans[i][1], t_spans[j][1]
        if se <= te:
            gs.append(i)
            i += 1
        if te <= se:
            gt.append(j)
            j += 1
        if se == te:
            groups.append((gs, gt))
            gs, gt = [], []
    gs += list(range(i, len(s_spans)))
    gt += list(range(j, len(t_spans)))
    if gs and gt:
        groups.append((gs, gt))
    return groups


def positional_groups(n_student: int, n_teacher: int) -> list[Group]:
    """The original ULD's alignment: the k-th student token against the k-th teacher token, cut to
    the shorter sequence (misaligned after the first place the tokenizations differ)."""
    return [([k], [k]) for k in range(min(n_student, n_teacher))]
