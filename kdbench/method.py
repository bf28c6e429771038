"""KD methods and the small interface the engine gives them.

A method is one file in methods/:

    @dataclass
    class MyConfig(MethodConfig):
        ratio: float = 0.5                      # defaults from the paper
        def __post_init__(self): check_range("ratio", self.ratio, 0, 1)

    @METHODS.register("mine")
    class Mine(Method):
        description = "one line for --list"
        Config = MyConfig
        requires_teacher = True
        def train(self, ctx: MethodContext) -> None:
            def loss_fn(batch):
                s, t = ctx.outputs(ctx.student, batch), ctx.teacher_outputs(batch)
                return LossOutput(ctx.divergence(forward_kl, s, t, batch.loss_mask))
            ctx.fit(loss_fn, ctx.gold_batches())

Losses go through the context (`divergence`, `cross_entropy`, `logprobs` of `outputs`), which computes
them from hidden states a chunk of tokens at a time (kdbench/chunked.py; TrainConfig.chunked_loss).
One import gives a method author everything: `from kdbench.method import ...` exposes the context,
the config base and checks, `LossOutput`, `Batch`, `ResumableBatches`, `masked_token_loss`,
`masked_mean` and every divergence (and `DIVERGENCES`).

Everything a method needs goes through `MethodContext`: the models, the data (gold batches, prompt
batches, teacher samples, pretraining blocks), forward passes, sampling (plain or teacher-mixed),
and `fit` (the shared training loop). Methods never touch files, devices or caches.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from .config import FULL_CACHE_MAX_VOCAB, TrainConfig
from .data import Batch, collate, encode_pair, infinite_batches, lm_batch
from .errors import ConfigError
from .models import slice_vocab
from .method_base import (DATA_SOURCES, METHODS, Method, MethodConfig, check_choice,  # noqa: F401
                          check_range, make_method)
from .row_sampling import sample_rows
from .sampling import Rollout, SamplingConfig
from .schema import Example
from .trainer import LossOutput, ResumableBatches, Trainer
from . import ranks
from .chunked import (LazyLogits, chunked_ce_and_token_loss, chunked_cross_entropy, chunked_logprobs,
                      chunked_token_loss, rows_per_chunk, token_fn_of)
from .hidden import dense_logits, lazy_forward
from .teacher_cache import TopKLogits
from .teacher_store import TeacherCacheReader, local_stage, mark_fixed
from .token_ops import cross_entropy, disable_dropout, gather_logprobs  # noqa: F401 (re-exported)
from .divergences import (DIVERGENCES, akl, alpha_beta, forward_kl, generalized_jsd, js, masked_mean,  # noqa: F401
                          masked_token_loss, reverse_kl, skew_forward_kl, skew_reverse_kl, tvd)

FULL = -1  # MethodContext._tcache_k of train.teacher_cache=full: every token, float32

__all__ = ["METHODS", "Method", "MethodConfig", "MethodContext", "check_range", "check_choice", "DATA_SOURCES",
           "LossOutput", "Batch", "ResumableBatches", "cross_entropy", "gather_logprobs", "disable_dropout",
           "masked_token_loss", "masked_mean", "DIVERGENCES", "forward_kl", "reverse_kl", "js", "generalized_jsd",
           "tvd", "skew_forward_kl", "skew_reverse_kl", "alpha_beta", "akl", "make_method", "LazyLogits"]

class Counters(dict):
    """Cost accounting for the leaderboard's cost table. Under several ranks each rank counts the
    work it did and the train cell sums them, except the counts in `PER_RUN`: facts about the
    global batch every rank sees whole (the number of rollouts), taken from rank 0."""

    PER_RUN = frozenset({"rollouts"})

    def add(self, key: str, n: int) -> None:
        self[key] = self.get(key, 0) + int(n)


class MethodContext:
    def __init__(self, *, student, teacher, tokenizer, train_examples: Sequence[Example], train_cfg: TrainConfig,
                 max_length: int, max_prompt_length: int, run_dir, log: logging.Logger | None = None,
                 pretrain_blocks: torch.Tensor | None = None, sampling: SamplingConfig | None = None,
                 teacher_samples_fn: Callable[[], list[Example]] | None = None,
                 unlabeled_fn: Callable[[], list[Example]] | None = None, unlabeled_prompts: Sequence[Example] = (),
                 device: str = "auto",
                 dtype: str = "float32", method_name: str = "", progress: bool = True, teacher_tokenizer=None,
                 teacher_cache_fn=None):
        self.student = student
        self.teacher = teacher
        self.tokenizer = tokenizer  # the student's
        # the teacher's, when it differs (cross-tokenizer methods only; see Method.cross_tokenizer)
        self.teacher_tokenizer = teacher_tokenizer if teacher_tokenizer is not None else tokenizer
        self.train_examples = list(train_examples)
        self.train_cfg = train_cfg
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.run_dir = run_dir
        self.log = log or logging.getLogger("kdbench")
        self.pretrain_blocks = pretrain_blocks
        # Rollout decoding defaults to MiniLLM's (T=1, top-p 1, top-k 0), bounded by max_length.
        self.sampling = sampling or SamplingConfig(max_new_tokens=max_length - max_prompt_length)
        self._teacher_samples_fn = teacher_samples_fn
        # Prompts without gold (the train task's "unlabeled" split; empty when the run does not use
        # them): on-policy methods roll out on them too, methods that need a target get the teacher's.
        self.unlabeled_prompts = list(unlabeled_prompts)
        self._unlabeled_fn = unlabeled_fn
        self._guided: list[Example] | None = None
        self.method_name = method_name
        self.trainer = Trainer(train_cfg, run_dir, desc=method_name or "train", device=device, dtype=dtype,
                               progress=progress)
        self.device = self.trainer.device
        self.selector = None  # kdbench.selection.DevSelector when the run selects on dev (set by the cell)
        self.selection: dict | None = None  # what the selector chose, after fit
        self.student.to(self.device)
        if self.teacher is not None:
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.counters = Counters()
        self.history: list[dict] = []
        self.vocab_size: int | None = None  # real vocabulary (set by the runner); logits are cut to it
        # how the row must be labelled when the method ran without part of itself (e.g. "no L_PT"):
        # recorded in the train cell's result and shown next to the method's name in every report
        self.variant: str | None = None
        self.teacher_vocab_size: int | None = None  # the teacher's, when its tokenizer differs
        # the stage function of the teacher cache (Stages.teacher_cache_stage; default: run_dir)
        self._teacher_cache_fn = teacher_cache_fn
        self._tcache = None  # kdbench.teacher_store.TeacherCacheReader, made on first use
        # k of the teacher cache: 0 off, FULL every token (float32, exact)
        self._tcache_k = {"topk": train_cfg.teacher_cache_k, "full": FULL}.get(train_cfg.teacher_cache, 0)
        self._prompt_memo: dict[tuple, list[int]] = {}  # prompt_ids: each prompt tokenised once

    # -- data ------------------------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    def encode(self, examples: Sequence[Example], responses: Sequence[str] | None = None) -> Batch:
        """Batch of prompt + response (+EOS); responses default to each example's target."""
        seqs = [encode_pair(self.tokenizer, ex.prompt, ex.target if responses is None else responses[i],
                            self.max_length, self.max_prompt_length) for i, ex in enumerate(examples)]
        # an example's own target is a fixed sequence: the teacher cache may answer for it
        return mark_fixed(collate(seqs, self.pad_id)) if responses is None else collate(seqs, self.pad_id)

    def prompt_ids(self, examples: Sequence[Example]) -> list[list[int]]:
        # tokenised once per prompt: on-policy methods sample the same prompts every epoch
        out = []
        for ex in examples:
            key = (ex.prompt, id(self.tokenizer), self.max_length, self.max_prompt_length)
            if key not in self._prompt_memo:
                self._prompt_memo[key] = encode_pair(self.tokenizer, ex.prompt, None, self.max_length,
                                                     self.max_prompt_length)[0]
            out.append(list(self._prompt_memo[key]))
        return out

    @property
    def prompt_examples(self) -> list[Example]:
        """Every prompt a teacher-guided method may learn from: train prompts, then unlabeled ones
        (their targets are not to be used: rollouts only)."""
        return self.train_examples + self.unlabeled_prompts

    def guided_examples(self) -> list[Example]:
        """Gold train examples plus, for each unlabeled prompt, the teacher's sample as its target:
        the data of a method that needs a target on every prompt (word-level KD, GKD's off-policy part)."""
        if not self.unlabeled_prompts or self._unlabeled_fn is None:
            return self._fixed_set("guided", self.train_examples)
        if self._guided is None:
            self._guided = self.train_examples + self._unlabeled_fn()
        return self._fixed_set("guided", self._guided)

    def _fixed_set(self, name: str, examples: Sequence[Example]) -> list[Example]:
        """An example set a method may train on with fixed targets: known to the teacher cache (built
        only if a batch of it asks for the teacher)."""
        if self.teacher_cache is not None:
            self.teacher_cache.register(name, examples)
        return list(examples)

    def example_batches(self, examples: Sequence[Example] | None = None, batch_size: int | None = None,
                        seed_offset: int = 0) -> Iterator[list[Example]]:
        """Infinite, seeded, reshuffled-every-epoch batches of examples (default: `guided_examples`,
        so a teacher-guided method sees the prompts without gold unless it chooses its data)."""
        exs = list(examples if examples is not None else self.guided_examples())
        for idx in infinite_batches(len(exs), batch_size or self.train_cfg.batch_size, self.train_cfg.seed + seed_offset):
            yield [exs[i] for i in idx]

    def gold_batches(self, examples: Sequence[Example] | None = None, batch_size: int | None = None) -> Iterator[Batch]:
        for exs in self.example_batches(examples, batch_size):
            yield self.encode(exs)

    def step_seed(self, k: int) -> int:
        """Sampling seed of optimizer step (or rollout round) k: distinct per step, fixed by the run's
        seed, so a resumed run redraws exactly the samples it lost."""
        return self.train_cfg.seed + 7919 * (k + 1)

    def policy_batches(self, source: str) -> Iterator[Batch]:
        """One Batch per optimizer step from a DATA_SOURCES entry: 'gold' train responses, 'teacher'
        cached teacher samples, or 'student' fresh samples from the current student every step
        (on-policy, as DistiLLM's student-generated outputs and GKD with lambda 1)."""
        check_choice("data", source, DATA_SOURCES, self.method_name)
        if source == "gold":  # gold where there is gold; the teacher's sample on unlabeled prompts
            return self.gold_batches(self.guided_examples())
        if source == "teacher":
            return self.gold_batches(self.teacher_samples())
        return (self.rollout_batch(self.sample(self.student, exs, seed=self.step_seed(k)))
                for k, exs in enumerate(self.example_batches(self.prompt_examples)))

    def pretrain_batches(self, batch_size: int | None = None, seed_offset: int = 7) -> Iterator[Batch]:
        """The LM / pretraining stream (MiniLLM's L_PT); every position is a target."""
        if self.pretrain_blocks is None:
            raise ConfigError(f"method '{self.method_name}' needs a pretraining corpus (lm loss) but the train "
                              "task provides none; set its lm_coef to 0")
        blocks = self.pretrain_blocks
        for idx in infinite_batches(len(blocks), batch_size or self.train_cfg.batch_size, self.train_cfg.seed + seed_offset):
            yield lm_batch(blocks[idx])

    def teacher_samples(self) -> list[Example]:
        """Train examples, then the unlabeled prompts, each with a teacher sample as its target
        (generated once per split, cached, shared)."""
        if self._teacher_samples_fn is None:
            raise ConfigError(f"method '{self.method_name}' needs teacher samples but no teacher is configured")
        return self._fixed_set("teacher-samples", self._teacher_samples_fn())

    @property
    def teacher_cache(self):
        """The teacher cache reader (kdbench/teacher_store.py), or None when TrainConfig.teacher_cache is none,
        there is no teacher, or the teacher's tokenizer differs from the student's."""
        if self._tcache is None and self._tcache_k and self.teacher is not None and \
                self.teacher_tokenizer is self.tokenizer:
            stage = self._teacher_cache_fn or local_stage(Path(self.run_dir) if self.run_dir else None, self.teacher)
            if self._tcache_k == FULL:
                vocab = self.vocab_size or len(self.tokenizer)
                if vocab > FULL_CACHE_MAX_VOCAB:
                    raise ConfigError(f"train.teacher_cache=full keeps all {vocab} log-probs of every position "
                                      f"(with their ids, {vocab * 8 / 1024:.0f} kB each); above {FULL_CACHE_MAX_VOCAB} tokens use "
                                      "train.teacher_cache=topk (train.teacher_cache_k, e.g. 256)")
                self._tcache = TeacherCacheReader(self, vocab, stage, dtype="float32", log=self.log)
            else:
                self._tcache = TeacherCacheReader(self, self._tcache_k, stage, log=self.log)
        return self._tcache

    def enable_teacher_cache(self, k: int) -> None:
        """Turn the teacher cache on at k (kd's deprecated method_config.kd.teacher_cache: topk)."""
        if self._tcache_k != k:
            self._tcache_k, self._tcache = k, None

    # -- model calls -----------------------------------------------------------------------------
    def logits(self, model, batch: Batch) -> torch.Tensor:
        """[B, L, V] logits aligned with batch.labels."""
        batch = batch.to(self.device)
        if model is self.student:
            self.counters.add("student_tokens", int(batch.attention_mask.sum()))
            model = self.trainer.forward_model or model  # the FSDP/DeepSpeed engine while training
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return slice_vocab(out, self.vocab_size)

    @torch.no_grad()
    def teacher_logits(self, batch: Batch) -> torch.Tensor:
        if self.teacher is None:
            raise ConfigError(f"method '{self.method_name}' needs a teacher")
        batch = batch.to(self.device)
        self.counters.add("teacher_forward_tokens", int(batch.attention_mask.sum()))
        tdev = next(self.teacher.parameters()).device
        # trimmed: the teacher never runs on the padding of rows shorter than the batch's longest
        out = dense_logits(self.teacher, batch.input_ids.to(tdev), batch.attention_mask.to(tdev), trim=True)
        same = self.teacher_tokenizer is self.tokenizer
        return slice_vocab(out, self.vocab_size if same else self.teacher_vocab_size).to(self.device)

    # -- losses from (lazy) logits: what methods call, so every method gets the chunked path -------
    @property
    def loss_chunk(self) -> int:
        """Rows per lm_head chunk, 0 when losses take the whole logits (TrainConfig.chunked_loss); sized so
        a [rows, V] chunk stays within train.loss_chunk_elements at the larger of the two vocabularies."""
        cfg, vocab = self.train_cfg, self.vocab_size or len(self.tokenizer)
        if not (cfg.chunked_loss == "on" or (cfg.chunked_loss == "auto" and vocab >= 8192)):
            return 0
        return rows_per_chunk(max(vocab, self.teacher_vocab_size or 0), cfg.loss_chunk_tokens, cfg.loss_chunk_elements)

    def outputs(self, model, batch: Batch) -> LazyLogits:
        """The model's logits aligned with batch.labels, computed by the loss that takes them
        (`divergence`, `cross_entropy`, `logprobs`) a chunk of response tokens at a time."""
        if model is self.teacher:
            return self.teacher_outputs(batch)
        fwd = self.trainer.forward_model  # FSDP/DeepSpeed: the engine's forward, whole logits
        if not self.loss_chunk or (model is self.student and fwd is not None):
            return LazyLogits.dense(self.logits(model, batch))
        batch = batch.to(self.device)
        out = lazy_forward(model, batch.input_ids, batch.attention_mask, self.vocab_size)
        if out is not None and model is self.student:
            self.counters.add("student_tokens", int(batch.attention_mask.sum()))
        return out if out is not None else LazyLogits.dense(self.logits(model, batch))

    @torch.no_grad()
    def teacher_outputs(self, batch: Batch) -> LazyLogits:
        """The teacher's logits on `batch` (as `outputs`, without gradient): from the teacher cache when it
        is on and every row is a fixed sequence (never for rollouts), else a live teacher forward."""
        cached = self.teacher_cache.outputs(batch) if self.teacher_cache is not None else None
        return cached if cached is not None else self.live_teacher_outputs(batch)

    @torch.no_grad()
    def live_teacher_outputs(self, batch: Batch) -> LazyLogits:
        if self.teacher is None or not self.loss_chunk or next(self.teacher.parameters()).device != self.device:
            return LazyLogits.dense(self.teacher_logits(batch))
        batch = batch.to(self.device)
        same = self.teacher_tokenizer is self.tokenizer  # as teacher_logits: the teacher's own width otherwise
        out = lazy_forward(self.teacher, batch.input_ids, batch.attention_mask,
                           self.vocab_size if same else self.teacher_vocab_size, trim=True)
        if out is not None:
            self.counters.add("teacher_forward_tokens", int(batch.attention_mask.sum()))
        return out if out is not None else LazyLogits.dense(self.teacher_logits(batch))

    def divergence(self, fn: Callable, student: LazyLogits, teacher: LazyLogits, mask: torch.Tensor, *args,
                   temperature: float = 1.0, **kwargs) -> torch.Tensor:
        """fn(student / T, teacher / T, mask, *args) for a batch divergence (or per-token function)."""
        token_fn = token_fn_of(fn)
        mask = mask.to(self.device)
        if not self.loss_chunk:
            s, t = student.full(), teacher.full()
            if temperature != 1.0:
                s, t = s / temperature, t / temperature
            return masked_token_loss(functools.partial(token_fn, **kwargs) if kwargs else token_fn, s, t, mask, *args)
        return chunked_token_loss(token_fn, student, teacher, mask, *args, temperature=temperature,
                                  chunk=self.loss_chunk, **kwargs)

    def ce_and_divergence(self, fn: Callable, student: LazyLogits, teacher: LazyLogits, labels: torch.Tensor,
                          mask: torch.Tensor, *args, ce_weight: float, div_weight: float, temperature: float = 1.0,
                          **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ce_weight * CE(labels) + div_weight * fn(student / T, teacher / T, mask), CE, D), CE and D
        detached: the usual "CE plus a divergence" objective with the two terms computed from one
        lm_head pass per chunk (chunked.chunked_ce_and_token_loss) instead of one pass each."""
        if not self.loss_chunk:
            ce = self.cross_entropy(student, labels)
            d = self.divergence(fn, student, teacher, mask, *args, temperature=temperature, **kwargs)
            return ce_weight * ce + div_weight * d, ce.detach(), d.detach()
        return chunked_ce_and_token_loss(token_fn_of(fn), student, teacher, labels.to(self.device),
                                         mask.to(self.device), *args, ce_weight=ce_weight, div_weight=div_weight,
                                         temperature=temperature, chunk=self.loss_chunk, **kwargs)

    def cross_entropy(self, student: LazyLogits, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(self.device)
        if not self.loss_chunk:
            return cross_entropy(student.full(), labels)
        return chunked_cross_entropy(student, labels, self.loss_chunk)

    def logprobs(self, student: LazyLogits, labels: torch.Tensor) -> torch.Tensor:
        """log p(label) per position [B, L], 0 where label < 0 (as `gather_logprobs`)."""
        labels = labels.to(self.device)
        if not self.loss_chunk or isinstance(student, TopKLogits):
            return gather_logprobs(student.full(), labels)
        return chunked_logprobs(student, labels, self.loss_chunk)

    def sample(self, model, examples: Sequence[Example], seed: int, mix_alpha: float = 0.0,
               cfg: SamplingConfig | None = None, skd_topk: int = 0) -> Rollout:
        """Sample responses from `model`; with mix_alpha > 0, teacher-mixed sampling; with skd_topk = K > 0,
        speculative-KD sampling (the teacher replaces proposals outside its top-K)."""
        cfg = cfg or self.sampling
        if cfg.vocab_size is None and self.vocab_size:  # a padded embedding's extra rows are not tokens
            cfg = dataclasses.replace(cfg, vocab_size=self.vocab_size)
        two = mix_alpha > 0 or skd_topk > 0
        # every row from its own seeded generator: under several ranks each samples its share of the
        # rows and all get the rollout one process draws (kdbench/row_sampling.py)
        r, mine = sample_rows(model, self.prompt_ids(examples), cfg, self.eos_id, self.pad_id, seed,
                              batch_size=max(len(examples), 1), mix_model=self.teacher if two else None,
                              mix_alpha=mix_alpha, skd_topk=skd_topk)
        self.counters.add("generated_tokens", mine)  # this rank's share: the runner sums over ranks
        if two:
            self.counters.add("teacher_forward_tokens", mine)
        return r

    def map_rows(self, n: int, fn: Callable[[list[int]], Any]) -> list:
        """[fn(row indices)] per rank, in rank order: work on rows every rank needs whole (scoring a
        rollout round) split across ranks instead of repeated on each (kdbench.ranks.map_rows). Under an
        FSDP/DeepSpeed engine a student forward is a collective that every rank must join as often as the
        others, and uneven shares would hang: there every rank runs every row, as one process."""
        if self.trainer.forward_model is not None:
            return [fn(list(range(n)))]
        return ranks.map_rows(n, fn)

    def rollout_batch(self, rollout: Rollout, token_extras: dict[str, list[list[float]]] | None = None) -> Batch:
        """A training Batch from a rollout; per-response-token extras aligned with labels."""
        return collate(list(zip(rollout.prompt_ids, rollout.response_ids)), self.pad_id, token_extras)

    # -- training --------------------------------------------------------------------------------
    def fit(self, loss_fn: Callable[[Batch], LossOutput], batches: Iterator[Batch]) -> list[dict]:
        # counters are checkpointed with the model: a resumed cell reports the cost of the whole run
        sel = self.selector
        state = {"counters": self.counters, **({"selection": sel.state} if sel is not None else {})}
        if sel is not None:
            sel.model = self.student
        self.history = self.trainer.fit(self.student, loss_fn, batches, state=state,
                                        on_step=sel.on_step if sel is not None else None)
        if sel is not None:  # end on the dev-selected weights (kdbench.selection)
            self.selection = sel.finish(self.trainer.accelerator.unwrap_model(self.student), self.train_cfg.steps)
        return self.history
