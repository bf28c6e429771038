"""What a training checkpoint holds besides weights, per rank (and the optimizer's state loaded back): random states, the
state objects a method hands the trainer (cost counters, selection), and how a checkpoint written
by another number of processes is shared out."""
from __future__ import annotations

import random
from typing import Any

import torch

from .resumable import is_resumable


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


def load_optimizer_state(opt, saved: dict) -> None:
    """opt.load_state_dict(saved), keeping the `fused` flag `opt` was built with: torch restores each group's
    saved flag, and a checkpoint from before fused AdamW (fused None) would resume on the unfused update, which
    also fails under fp16 loss scaling (the optimizer still reports fused-style scaling support)."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if isinstance(groups, list) and len(groups) == len(opt.param_groups):
        saved = {**saved, "param_groups": [{**g, "fused": cur["fused"]} if "fused" in cur else g
                                           for g, cur in zip(groups, opt.param_groups)]}
    opt.load_state_dict(saved)


def get_state(obj: Any) -> Any:
    return obj.state_dict() if is_resumable(obj) else dict(obj)


def put_state(obj: Any, saved: Any) -> None:
    if is_resumable(obj):
        obj.load_state_dict(saved)
    else:  # a dict (e.g. cost counters): updated in place, since the caller holds a reference
        obj.clear()
        obj.update(saved)


# the state MethodContext.fit hands the trainer as its cost counters: each rank counts its own work,
# and the train cell sums them over ranks (kdbench.ranks.sum_counts)
SUMMED = frozenset({"counters"})


def regroup(own: list, saved: dict, rank: int, summed: frozenset = SUMMED) -> dict:
    """Rank `rank`'s {"extra", "rng"} from a checkpoint written by another number of processes
    (`own`: the per-rank records, [] when one process wrote it). The states named in `summed` (cost
    counters, summed over ranks when the cell closes) go whole to rank 0 and empty to the others, so
    the steps before the checkpoint are counted once; every other state, and the random state, is
    rank 0's."""
    first = own[0] if own else {"extra": saved.get("extra", {}), "rng": saved["rng"]}
    out = {}
    for name, state in first["extra"].items():
        if name in summed:
            total: dict = {}
            for r in own or [first]:
                for k, v in r["extra"].get(name, {}).items():
                    total[k] = total.get(k, 0) + v
            out[name] = total if rank == 0 else {}
        else:
            out[name] = state
    return {"extra": out, "rng": first["rng"]}
