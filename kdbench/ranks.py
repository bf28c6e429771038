"""Which of the launched processes this is, and the few collectives the runner needs to keep them
in step (torchrun / `accelerate launch`; one process is world 1 and every call here is trivial).

Roles (docs/scaling.md): rank 0 builds stages and writes every file of the run folder; every rank
trains the train cells together (the DDP-exact trainer) and samples its share of the evaluation
prompts and on-policy rollouts. Work that only rank 0 does runs through `on_main`, which tells the
other ranks how it ended, so a failure there is a failure on every rank and no rank waits forever
in a collective the others never reach.

Inside `solo()` this process behaves as a world of one (no collectives, no sharding): how rank 0
builds the stages (training included) exactly as a single process would.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, TypeVar

from .errors import KdbenchError

T = TypeVar("T")

_SOLO = [0]  # depth of nested solo() blocks


class RankFailedError(KdbenchError):
    """Raised on every rank when the same piece of work failed on another rank."""


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def launched_world() -> int:
    """The number of processes the launcher started (its WORLD_SIZE), whatever the current block."""
    d = _dist()
    return d.get_world_size() if d is not None else int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched_rank() -> int:
    d = _dist()
    return d.get_rank() if d is not None else int(os.environ.get("RANK", "0") or 0)


def world() -> int:
    """Processes that work together here: 1 inside solo() or without a launcher."""
    return 1 if _SOLO[0] else launched_world()


def rank() -> int:
    return 0 if _SOLO[0] else launched_rank()


def is_main() -> bool:
    """Rank 0 of the launch: the one process that writes the run folder and the stage cache."""
    return launched_rank() == 0


def _collective() -> bool:
    if world() == 1:
        return False
    if _dist() is None:
        raise KdbenchError(f"{launched_world()} processes were launched but no process group is initialised; "
                           "create kdbench's accelerator first (kdbench.trainer.get_accelerator)")
    return True


@contextmanager
def solo():
    """This process alone: trainers, samplers and evaluations inside run as a single process would."""
    _SOLO[0] += 1
    try:
        yield
    finally:
        _SOLO[0] -= 1


def barrier() -> None:
    if _collective():
        _dist().barrier()


def gather(obj: Any) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not _collective():
        return [obj]
    out: list = [None] * world()
    _dist().all_gather_object(out, obj)
    return out


def broadcast(obj: Any = None) -> Any:
    """Rank 0's `obj` on every rank."""
    if not _collective():
        return obj
    box = [obj if rank() == 0 else None]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def raise_agreed(errors: list, own: BaseException | None, what: str) -> None:
    """Raise on every rank when some rank failed: a rank's own exception where it has one, else a
    RankFailedError naming the rank that failed and its message."""
    bad = [(r, e) for r, e in enumerate(errors) if e is not None]
    if not bad:
        return
    if own is not None:
        raise own
    r, msg = bad[0]
    raise RankFailedError(f"{what} failed on rank {r}: {msg}")


def _attempt(fn: Callable[[], T]) -> tuple[T | None, BaseException | None, str | None]:
    """(result, exception, its message): a rank keeps its error so that it can still join the
    collective that tells every rank, and then raise."""
    try:
        return fn(), None, None
    except Exception as e:  # noqa: BLE001 - re-raised by the caller, on every rank
        return None, e, f"{type(e).__name__}: {e}"


def all_ok(fn: Callable[[], T], what: str = "work") -> T:
    """Run `fn` on every rank; if it raised on any rank, raise on every rank (own error first)."""
    out, err, msg = _attempt(fn)
    raise_agreed(gather(msg), err, what)
    return out


def agreed(fn: Callable[[], T], what: str = "work") -> T:
    """`all_ok` for work done every step: a one-number all-reduce says whether any rank failed, and
    only then are the messages gathered. One process: fn() as it is."""
    if not _collective():
        return fn()
    out, err, msg = _attempt(fn)
    if any_true(err is not None):
        raise_agreed(gather(msg), err, what)
    return out


def on_main(fn: Callable[[], T], what: str = "work") -> T:
    """Run `fn` on rank 0 alone (as a single process: solo) while the other ranks wait; every rank
    returns its (picklable) result, or raises when it failed on rank 0."""
    if not _collective():
        return fn()
    err: BaseException | None = None
    out = None
    if rank() == 0:
        try:
            with solo():
                out = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            err = e
    status = broadcast((None, out) if err is None else (f"{type(err).__name__}: {err}", None))
    if status[0] is not None:
        if err is not None:
            raise err
        raise RankFailedError(f"{what} failed on rank 0: {status[0]}")
    return status[1]


def any_true(flag: bool) -> bool:
    """True on every rank when `flag` is true on some rank (one small all-reduce)."""
    if not _collective():
        return flag
    import torch

    t = torch.tensor([1.0 if flag else 0.0])
    if _dist().get_backend() == "nccl":
        t = t.cuda()
    _dist().all_reduce(t)
    return bool(t.item() > 0)


def map_rows(n: int, fn: Callable[[list[int]], T]) -> list[T]:
    """Rows 0..n-1 split into contiguous shares, one per rank: each rank calls `fn(its row indices)`
    and every rank gets all ranks' results in rank order (so rows in their order). An error on any
    rank raises on all. One process: [fn(all rows)]."""
    import torch

    mine = torch.arange(n).tensor_split(world())[rank()].tolist()
    if not _collective():
        return [fn(mine)]
    out, err, msg = _attempt(lambda: fn(mine))
    parts = gather((msg, out))
    raise_agreed([p[0] for p in parts], err, "scoring rows")
    return [p[1] for p in parts]


def sum_counts(counts: dict, per_run: frozenset = frozenset()) -> dict:
    """Cost counters added up over ranks (each rank counts the work it did itself); the keys in
    `per_run` count something every rank saw whole, and keep rank 0's value."""
    total: dict = {}
    for r, d in enumerate(gather(dict(counts))):
        for k, v in d.items():
            if k in per_run:  # rank 0's, which comes first
                total.setdefault(k, v)
            else:
                total[k] = total.get(k, 0) + v
    return total


def close(wait: bool = True) -> None:
    """End the process group (after a barrier when `wait`): a process that exits while gloo's
    threads still run can abort at exit ("terminate called without an active exception")."""
    d = _dist()
    if d is None:
        return
    if wait and launched_world() > 1:
        d.barrier()
    d.destroy_process_group()
