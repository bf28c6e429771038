"""The one training loop, used by every stage and every method.

Built on accelerate (device placement, mixed precision on devices that support it, multi-process
launch). Gradient accumulation is exact: each micro-batch's mean loss is weighted by its share of
the step's response tokens, so the summed gradient equals that of the token-mean over the whole
batch (not the mean of micro-batch means, which over-weights short micro-batches).

Resume: a killed run continues from run_dir/checkpoint.pt (written atomically every
checkpoint_every steps) and ends with the same weights, history and cost counters as an
uninterrupted run on CPU. The data position is restored from the batch iterator's own state when
it has one (ResumableBatches: rollout rounds, replay buffers), else by replaying a plain iterator
to the step. Replaying is exact for deterministic iterators, but it redoes their work for every
skipped step, so a plain generator that samples a fresh rollout per step samples them all again.

Multi-process (`accelerate launch`, DDP): every rank draws the same global batch from its
(identically seeded) iterator and trains on its own contiguous shard of rows. The token count of
the whole global batch is all-reduced, each micro-batch loss is weighted by its tokens over that
global count, and the gradients are summed across ranks once per step: the update equals the
single-process one on the global batch (up to float summation order). See docs/scaling.md.
"""
from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .adapters import checkpoint_state, load_checkpoint_state
from .config import TrainConfig, to_dict
from .data import Batch
from .errors import KdbenchError
from .io import atomic_torch_save, remove_stale_temps
from .launch import warn_if_not_sharded
from . import ranks
from .resumable import ResumableBatches, is_resumable as _is_resumable  # noqa: F401 (ResumableBatches: re-exported)
from .train_state import get_state as _get_state, load_optimizer_state, put_state as _put_state, regroup, \
    rng_state as _rng_state, set_rng_state as _set_rng_state

log = logging.getLogger("kdbench")


class NonFiniteLossError(KdbenchError):
    pass


class TrainingOutOfMemoryError(KdbenchError):
    pass


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, mean over the micro-batch's response tokens
    logs: dict[str, float] = field(default_factory=dict)  # named loss terms, for logs and NaN reports


_ACCELERATOR = None


def get_accelerator(device: str = "auto", dtype: str = "float32"):
    """One Accelerator per process (accelerate refuses a second with other settings)."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        if device.startswith("cuda:"):  # accelerate uses the current CUDA device: make it the one asked for
            torch.cuda.set_device(torch.device(device))
        mp = "no"
        if not cpu and dtype in ("bfloat16", "float16"):
            mp = "bf16" if dtype == "bfloat16" else "fp16"
        # Rank 0 builds the stages alone (kdbench.ranks.on_main) while the other ranks wait in a
        # collective: the default 30 min timeout would end a run whose teacher SFT takes longer.
        # A rank that dies still ends the run at once (torchrun stops the others).
        from datetime import timedelta

        from accelerate.utils import InitProcessGroupKwargs

        _ACCELERATOR = Accelerator(cpu=cpu, mixed_precision=mp,
                                   kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=48))])
        warn_if_not_sharded(_ACCELERATOR)
    return _ACCELERATOR


def make_optimizer(model, cfg: TrainConfig, device: str | torch.device | None = None) -> torch.optim.Optimizer:
    """AdamW, fused where the weights train on a CPU or a CUDA device (`device`: where they will train, when
    they are not there yet): one kernel for all tensors instead of a Python loop of ~10 ops per tensor, the
    same update to float rounding. HF Trainer's default (adamw_torch_fused) does the same."""
    # No weight decay on biases and norm weights (1-d tensors), as MiniLLM's SFT does.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    kinds = {torch.device(device).type} if device is not None else {p.device.type for p in decay + no_decay}
    fused = kinds <= {"cpu", "cuda"} and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                                           for p in decay + no_decay)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    floor = min(cfg.min_lr / cfg.lr, 1.0)

    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, cfg.steps - cfg.warmup_steps)
        prog = min(1.0, (step - cfg.warmup_steps) / span)
        if cfg.schedule == "linear":
            return floor + (1 - floor) * (1 - prog)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog))

    return f


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path | None = None, desc: str = "train",
                 device: str = "auto", dtype: str = "float32", progress: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else None
        self.desc = desc
        self.accelerator = get_accelerator(device, dtype)
        self.progress = progress and os.environ.get("KDBENCH_NO_PROGRESS") != "1"
        self.history: list[dict] = []
        # Under FSDP / DeepSpeed the student's forward must go through the wrapped engine (FSDP
        # gathers shards in its forward); MethodContext.logits uses this while fit() runs.
        self.forward_model = None
        self.tracker = None  # kdbench.tracking.RunTracker: every step's logs go to it (--report-to)

    @property
    def device(self):
        return self.accelerator.device

    def _manual_ddp(self) -> bool:
        """Several plain data-parallel processes. We keep the model unwrapped and sum gradients
        ourselves once per step instead of wrapping it in torch DDP: methods call the student
        several times per loss (rollout scoring, an LM term) and outside the wrapper, which DDP's
        reducer does not support, and one all-reduce per step also serves gradient accumulation."""
        from accelerate.utils import DistributedType

        return ranks.world() > 1 and self.accelerator.distributed_type in (
            DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)

    def _shard(self, batch: Batch) -> Batch:
        """This rank's contiguous share of the global batch's rows."""
        world, rank = ranks.world(), ranks.rank()
        if batch.size < world:
            raise KdbenchError(f"{self.desc}: a batch of {batch.size} rows cannot be shared by {world} processes; "
                               f"set batch_size >= {world} (a multiple of it balances the work)")
        return batch.select(torch.arange(batch.size).tensor_split(world)[rank])

    def _all_reduce_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(t, reduction="sum").tolist()

    def _sync_grads(self, model) -> None:
        """Sum gradients over ranks in one flat buffer (one collective per step, not per tensor)."""
        import torch.distributed as dist

        ps = [p for p in model.parameters() if p.requires_grad]
        for p in ps:  # a parameter unused on one rank must still join the collective
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in ps])
        dist.all_reduce(flat)
        i = 0
        for p in ps:
            n = p.numel()
            p.grad.copy_(flat[i: i + n].view_as(p.grad))
            i += n

    def _broadcast_params(self, model) -> None:
        """Start every rank from rank 0's weights (what DDP does on wrapping)."""
        import torch.distributed as dist

        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, src=0)

    def fit(self, model, loss_fn: Callable[[Batch], LossOutput], batches: Iterator[Batch],
            on_step: Callable[[int, dict], None] | None = None, state: dict[str, Any] | None = None) -> list[dict]:
        """Run cfg.steps optimizer steps. `batches` yields one full batch per step (the trainer
        splits it into cfg.grad_accum micro-batches). Resumes from run_dir/checkpoint.pt.

        Every cfg.checkpoint_every steps the checkpoint records model, optimizer, scheduler, RNG
        states, step, history, the data position and `state` (name -> a dict, restored in place, or
        an object with state_dict/load_state_dict: cost counters, a PPO buffer). The data position:
        `batches.state_dict()` when the iterator has one (see ResumableBatches), else the step
        count, and resuming replays a plain iterator to it (exact for deterministic ones)."""
        try:
            return self._fit(model, loss_fn, batches, on_step, state)
        finally:
            self.forward_model = None
            # The process-wide Accelerator keeps every model and optimizer it prepared: without this,
            # each train cell's student, gradients and AdamW moments (~4x the weights) stayed alive for
            # the rest of the run (the smol preset: 1.3 GB a cell, 10.5 GB peak), a failed cell's too.
            self.accelerator.free_memory()

    def _fit(self, model, loss_fn, batches, on_step, state) -> list[dict]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        model.train()
        opt = make_optimizer(model, cfg, self.device)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
        manual_ddp = self._manual_ddp()
        world = ranks.world()
        # one process of several training alone (a stage rank 0 builds: kdbench.ranks.solo): plain
        # torch, since accelerate's wrappers would wait for the other processes
        alone = world == 1 and ranks.launched_world() > 1
        if manual_ddp:
            model.to(self.device)
            opt = self.accelerator.prepare(opt)
            self._broadcast_params(model)
        elif alone:
            model.to(self.device)
        else:
            model, opt = self.accelerator.prepare(model, opt)
            if world > 1:
                self.forward_model = model  # FSDP / DeepSpeed engine
        start = 0
        acc: dict[str, float] = {}
        n_acc = 0
        extra = dict(state or {})
        scaler = getattr(self.accelerator, "scaler", None)  # fp16 loss scale: part of the exact state
        ckpt = self.run_dir / "checkpoint.pt" if self.run_dir else None
        if ckpt is not None and self.run_dir.exists():
            remove_stale_temps(self.run_dir, ckpt.name)  # a checkpoint write cut short by a kill
        saved = self._load_checkpoint(ckpt) if ckpt is not None else None
        if saved is not None:
            load_checkpoint_state(self.accelerator.unwrap_model(model), saved["model"])
            load_optimizer_state(opt, saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            start = saved["step"]
            self.history = saved.get("history", [])
            acc, n_acc = dict(saved.get("log_acc", {})), saved.get("log_n", 0)  # a log window cut by the checkpoint
            if scaler is not None and saved.get("scaler") is not None:
                scaler.load_state_dict(saved["scaler"])
            # each rank's own data position, counters and random state (several ranks: saved per rank;
            # a method may keep per-rank sums in its data state, e.g. TAID's)
            own = saved.get("ranks", [])
            mine = own[ranks.rank()] if len(own) == world else {"extra": saved.get("extra", {}), "rng": saved["rng"]}
            data = mine.get("data", saved.get("data"))
            if data is not None and _is_resumable(batches):
                batches.load_state_dict(data)
            else:
                for _ in range(start):  # deterministic data order: replay the iterator
                    next(batches)
            if len(own) != world and (own or world > 1):
                log.warning("%s: checkpoint written by %d process(es), resumed on %d: counters are regrouped and "
                            "random states taken from rank 0, so the run is not bit-identical to an uninterrupted "
                            "one", self.desc, max(len(own), 1), world)
                mine = regroup(own, saved, ranks.rank())
            for name, obj in extra.items():
                if name in mine["extra"]:
                    _put_state(obj, mine["extra"][name])
            # last: replaying the iterator may have drawn random numbers (dropout during sampling)
            _set_rng_state(mine["rng"])
            log.info("%s: resumed from step %d", self.desc, start)
        bar = tqdm(total=cfg.steps, initial=start, desc=self.desc, leave=False,
                   disable=not self.progress or not self.accelerator.is_main_process,
                   dynamic_ncols=True)
        for step in range(start, cfg.steps):
            # data (a rollout round, a dev loss), the step hook and the checkpoint write run outside the
            # loss's failure flag: a failure there on one rank must stop every rank, not leave the others
            # waiting in the next collective
            batch = ranks.agreed(lambda: next(batches), f"{self.desc}: step {step + 1}, its batch")
            if world > 1:
                batch = self._shard(batch)
            micro = batch.split(cfg.grad_accum)
            weights = [m.n_tokens or m.size for m in micro]
            total = float(sum(weights))
            if world > 1:  # normalise by the global batch's tokens, so summed gradients are its token-mean
                total = self._all_reduce_sum([total])[0]
            step_logs: dict[str, float] = {}
            failed: Exception | None = None
            try:
                for m, w in zip(micro, weights):
                    m = m.to(self.device)
                    with self.accelerator.autocast():
                        out = loss_fn(m)
                    if not torch.isfinite(out.loss):
                        raise NonFiniteLossError(self._non_finite_message(step + 1, out))
                    if alone:  # no engine was prepared (DeepSpeed's backward would need one)
                        (out.loss * (w / total)).backward()
                    else:
                        self.accelerator.backward(out.loss * (w / total))
                    for k, v in {"loss": float(out.loss.detach()), **out.logs}.items():
                        step_logs[k] = step_logs.get(k, 0.0) + float(v) * w / total
            except torch.cuda.OutOfMemoryError as e:
                opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()  # so the benchmark's next cells can still run
                failed = TrainingOutOfMemoryError(
                    f"{self.desc}: out of device memory at step {step + 1} (batch_size {cfg.batch_size}, "
                    f"grad_accum {cfg.grad_accum}); raise grad_accum (micro-batches of batch_size / grad_accum) "
                    f"or lower batch_size. {str(e).splitlines()[0] if str(e) else ''}".rstrip())
            except Exception as e:  # noqa: BLE001 - several ranks: raised below on every rank
                if world == 1:
                    raise
                failed = e
            if failed is not None and world == 1:
                raise failed from None
            # a loss that failed on one rank's rows (non-finite...) stops every rank: one flag
            # all-reduced per step, the messages gathered only then
            if world > 1 and ranks.any_true(failed is not None):
                ranks.raise_agreed(ranks.gather(None if failed is None else f"{type(failed).__name__}: {failed}"),
                                   failed, f"{self.desc}: step {step + 1}")
            if manual_ddp:
                self._sync_grads(model)
            if world > 1:  # logs: token-weighted over the global batch, identical on every rank
                keys = sorted(step_logs)
                step_logs = dict(zip(keys, self._all_reduce_sum([step_logs[k] for k in keys])))
            if cfg.clip_grad > 0:
                clip = torch.nn.utils.clip_grad_norm_ if alone else self.accelerator.clip_grad_norm_
                gn = clip(model.parameters(), cfg.clip_grad)
                step_logs["grad_norm"] = float(gn)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            for k, v in step_logs.items():
                acc[k] = acc.get(k, 0.0) + v
            n_acc += 1
            if self.tracker is not None:
                self.tracker.log_step(step + 1, {**step_logs, "lr": sched.get_last_lr()[0]})
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                rec = {"step": step + 1, "lr": sched.get_last_lr()[0], **{k: v / n_acc for k, v in acc.items()}}
                self.history.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
                # Without a progress bar (CI, logs), report about ten times per stage.
                if not self.progress and (step + 1) % max(cfg.log_every, cfg.steps // 10 or 1) < cfg.log_every:
                    log.info("%s: step %d/%d loss %.4f", self.desc, step + 1, cfg.steps, rec["loss"])
                if on_step:
                    ranks.agreed(lambda: on_step(step + 1, rec), f"{self.desc}: step {step + 1}, after the step")
                acc, n_acc = {}, 0
            bar.update(1)
            if ckpt is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                    and step + 1 < cfg.steps:
                # counters and random states differ per rank (each counts and draws for its rows)
                per_rank = ranks.gather({"extra": {name: _get_state(obj) for name, obj in extra.items()},
                                         "rng": _rng_state(),
                                         "data": batches.state_dict() if _is_resumable(batches) else None}
                                        ) if world > 1 else []

                def save() -> None:  # rank 0 writes; a failed write stops every rank
                    if not ranks.is_main():
                        return
                    atomic_torch_save({"model": checkpoint_state(self.accelerator.unwrap_model(model)),
                                       "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                       "rng": _rng_state(), "step": step + 1, "history": self.history,
                                       "data": batches.state_dict() if _is_resumable(batches) else None,
                                       "extra": {name: _get_state(obj) for name, obj in extra.items()},
                                       "ranks": per_rank, "log_acc": acc, "log_n": n_acc,
                                       "scaler": scaler.state_dict() if scaler is not None else None,
                                       "train_config": to_dict(cfg)}, ckpt)

                ranks.agreed(save, f"{self.desc}: checkpoint at step {step + 1}")
        bar.close()
        model.eval()
        return self.history

    def _load_checkpoint(self, ckpt: Path) -> dict | None:
        """The checkpoint to resume from, or None. Writes are atomic, so an unreadable file or one
        from other settings is not a torn write but a stale file: start over rather than fail."""
        if not ckpt.exists():
            return None
        try:
            saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file means the same: start over
            log.warning("%s: ignoring unreadable checkpoint %s (%s: %s); training from step 0", self.desc, ckpt,
                        type(e).__name__, e)
            return None
        if saved.get("train_config", to_dict(self.cfg)) != to_dict(self.cfg):
            log.warning("%s: ignoring checkpoint %s written with other training settings; training from step 0",
                        self.desc, ckpt)
            return None
        return saved

    def _non_finite_message(self, step: int, out: LossOutput) -> str:
        bad = [k for k, v in out.logs.items() if not math.isfinite(float(v))]
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in out.logs.items())
        which = f"non-finite term(s): {', '.join(bad)}" if bad else "the logged terms are finite, the total is not"
        return (f"{self.desc}: non-finite loss {float(out.loss)} at step {step} (terms: {terms or 'loss'}); {which}. "
                "Lower the learning rate, set clip_grad, or train in float32")
