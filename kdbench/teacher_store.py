"""The teacher's distributions on fixed examples, served from a cached stage (TrainConfig.teacher_cache).

A method asks the context for the teacher on a batch (`MethodContext.teacher_outputs`); when the
cache is on and every row of the batch is a fixed sequence (made by `MethodContext.encode` from an
example's own target: gold, or a cached teacher sample), the answer comes from here. Rollouts
(`rollout_batch`, `collate` of fresh samples, replay buffers) carry no such mark and always go to
the live teacher: an on-policy sample is never read from the cache, even when its tokens happen to
equal a cached sequence (tests/engine/test_teacher_cache.py seeds that bug).

The example sets a method trains on are registered as the context hands them out (guided examples,
teacher samples); nothing is built until a fixed batch misses. Then each registered set is built or
loaded as one stage (kdbench/stages.py `teacher_cache_stage`: keyed by the teacher, the set's
content, k, the vocabulary and the lengths; shared by every method, epoch and training seed) until
the batch is covered. A fixed batch that no registered set covers falls back to the live teacher.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import torch

from .config import stable_hash
from .data import Batch
from .schema import Example
from .teacher_cache import TopKLogits, TopKTeacherCache

FIXED = "fixed_target"  # Batch.extras key: 1 for a row encoded from its example's own target

# (spec, build(folder) -> info) -> the stage folder and key; Stages.teacher_cache_stage, or `local_stage`
StageFn = Callable[[dict, Callable[[Path], dict]], tuple[Path, str]]


def mark_fixed(batch: Batch) -> Batch:
    batch.extras[FIXED] = torch.ones(batch.size)
    return batch


def is_fixed(batch: Batch) -> bool:
    flag = batch.extras.get(FIXED)
    return flag is not None and bool((flag > 0).all())


def examples_fingerprint(examples: Sequence[Example]) -> str:
    return stable_hash([[ex.id, ex.prompt, ex.target] for ex in examples], n=16)


def weights_fingerprint(model) -> str:
    """A hash of a model's parameters and buffers by content (names, shapes, dtypes and bytes): two
    teachers with other weights never share a cache folder. About a second per GB of weights."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for name, t in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.is_meta or not t.numel():  # no data to read (offloaded or empty): its name and shape only
            continue
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too
    return h.hexdigest()


def local_stage(root: Path | None, teacher=None) -> StageFn:
    """A stage function for a context without a run's stage cache (tests, benchmarks): a folder in
    `root` per key, or an in-memory build when root is None. The key holds `teacher`'s weights
    fingerprint when given (the runner's stage keys the teacher by its own stage key instead)."""
    fp: list[str] = []

    def stage(spec: dict, build):
        if teacher is not None and not fp:
            fp.append(weights_fingerprint(teacher))  # once: a stage function serves one context's teacher
        key = stable_hash({**spec, "teacher": fp[0]} if fp else spec)
        folder = Path(root) / f"teacher-topk-{key}" if root is not None else None
        if folder is not None and (folder / "topk.pt").exists():
            return folder, key
        if folder is None:
            import tempfile
            folder = Path(tempfile.mkdtemp(prefix="teacher-topk-"))
        folder.mkdir(parents=True, exist_ok=True)
        build(folder)
        return folder, key
    return stage


class TeacherCacheReader:
    """Per context: registered example sets, the loaded union of their caches, what was read."""

    def __init__(self, ctx, k: int, stage_fn: StageFn, dtype: str = "float16", log: logging.Logger | None = None):
        self.ctx, self.k, self.stage_fn, self.dtype = ctx, k, stage_fn, dtype
        self.log = log or logging.getLogger("kdbench")
        self.pending: dict[str, tuple[str, list[Example]]] = {}  # content hash -> (set name, examples)
        self.loaded: set[str] = set()
        self.stage_keys: list[str] = []  # the stages read, in order (the train cell records them)
        self.cache: TopKTeacherCache | None = None
        self._warned = False

    def register(self, name: str, examples: Sequence[Example]) -> None:
        fp = examples_fingerprint(examples)
        if fp not in self.loaded and fp not in self.pending:
            self.pending[fp] = (name, list(examples))

    def outputs(self, batch: Batch) -> TopKLogits | None:
        """The cached teacher on a fixed batch, or None (not fixed, or not covered: ask the teacher)."""
        if not is_fixed(batch):
            return None
        hit = self.cache.lookup(batch, self.ctx.device) if self.cache is not None else None
        while hit is None and self.pending:
            fp = next(iter(self.pending))
            self._load(fp, *self.pending.pop(fp))
            hit = self.cache.lookup(batch, self.ctx.device)
        if hit is None:
            if not self._warned:
                self.log.warning("teacher cache: a fixed batch outside the registered example sets; "
                                 "using the live teacher for it")
                self._warned = True
            return None
        self.ctx.counters.add("teacher_cache_tokens", batch.n_tokens)
        return hit

    def _load(self, fp: str, name: str, examples: list[Example]) -> None:
        ctx = self.ctx
        vocab = ctx.vocab_size or len(ctx.tokenizer)
        spec = {"set": name, "examples": fp, "n": len(examples), "k": self.k, "vocab": vocab, "store": self.dtype,
                "max_length": ctx.max_length, "max_prompt_length": ctx.max_prompt_length}

        def build(folder: Path) -> dict:
            cache = TopKTeacherCache(self.k, vocab, self.dtype)
            bs = ctx.train_cfg.batch_size
            for s in range(0, len(examples), bs):
                b = ctx.encode(examples[s: s + bs]).to(ctx.device)
                cache.add(b, ctx.live_teacher_outputs(b), ctx.loss_chunk or 256)
            cache.save(folder / "topk.pt")
            return {"rows": len(cache), "positions": cache.n_rows, "k": cache.k}

        folder, key = self.stage_fn(spec, build)
        part = TopKTeacherCache.load(folder / "topk.pt")
        if self.cache is None:
            self.cache = part
        else:
            self.cache.merge(part)
        self.loaded.add(fp)
        self.stage_keys.append(key)
        self.log.info("teacher cache: %s (%d sequences, k=%d) from %s", name, len(part), part.k, folder)
