"""The one training loop, used by every stage and every method.

Built on accelerate (device placement, mixed precision on devices that support it, multi-process
launch). Gradient accumulation is exact: each micro-batch's mean loss is weighted by its share of
the step's response tokens, so the summed gradient equals that of the token-mean over the whole
batch (not the mean of micro-batch means, which over-weights short micro-batches).
"""
from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from .config import TrainConfig
from .data import Batch
from .errors import KdbenchError
from .io import atomic_torch_save

log = logging.getLogger("kdbench")


class NonFiniteLossError(KdbenchError):
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
        _ACCELERATOR = Accelerator(cpu=cpu, mixed_precision=mp)
    return _ACCELERATOR


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and norm weights (1-d tensors), as MiniLLM's SFT does.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


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


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path | None = None, desc: str = "train",
                 device: str = "auto", dtype: str = "float32", progress: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else None
        self.desc = desc
        self.accelerator = get_accelerator(device, dtype)
        self.progress = progress and os.environ.get("KDBENCH_NO_PROGRESS") != "1"
        self.history: list[dict] = []

    @property
    def device(self):
        return self.accelerator.device

    def fit(self, model, loss_fn: Callable[[Batch], LossOutput], batches: Iterator[Batch],
            on_step: Callable[[int, dict], None] | None = None) -> list[dict]:
        """Run cfg.steps optimizer steps. `batches` yields one full batch per step (the trainer
        splits it into cfg.grad_accum micro-batches). Resumes from run_dir/checkpoint.pt."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        model.train()
        opt = make_optimizer(model, cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
        model, opt = self.accelerator.prepare(model, opt)
        start = 0
        ckpt = self.run_dir / "checkpoint.pt" if self.run_dir else None
        if ckpt is not None and ckpt.exists():
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            self.accelerator.unwrap_model(model).load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            start = state["step"]
            self.history = state.get("history", [])
            for _ in range(start):  # deterministic data order: fast-forward the iterator
                next(batches)
            log.info("%s: resumed from step %d", self.desc, start)
        bar = tqdm(total=cfg.steps, initial=start, desc=self.desc, leave=False, disable=not self.progress,
                   dynamic_ncols=True)
        acc: dict[str, float] = {}
        n_acc = 0
        for step in range(start, cfg.steps):
            batch = next(batches)
            micro = batch.split(cfg.grad_accum)
            weights = [m.n_tokens or m.size for m in micro]
            total = float(sum(weights))
            step_logs: dict[str, float] = {}
            for m, w in zip(micro, weights):
                m = m.to(self.device)
                with self.accelerator.autocast():
                    out = loss_fn(m)
                if not torch.isfinite(out.loss):
                    terms = ", ".join(f"{k}={v:.4g}" for k, v in out.logs.items())
                    raise NonFiniteLossError(f"{self.desc}: non-finite loss {float(out.loss)} at step {step + 1}"
                                             f" (terms: {terms or 'loss'})")
                self.accelerator.backward(out.loss * (w / total))
                for k, v in {"loss": float(out.loss.detach()), **out.logs}.items():
                    step_logs[k] = step_logs.get(k, 0.0) + float(v) * w / total
            if cfg.clip_grad > 0:
                gn = self.accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                step_logs["grad_norm"] = float(gn)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            for k, v in step_logs.items():
                acc[k] = acc.get(k, 0.0) + v
            n_acc += 1
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                rec = {"step": step + 1, "lr": sched.get_last_lr()[0], **{k: v / n_acc for k, v in acc.items()}}
                self.history.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
                # Without a progress bar (CI, logs), report about ten times per stage.
                if not self.progress and (step + 1) % max(cfg.log_every, cfg.steps // 10 or 1) < cfg.log_every:
                    log.info("%s: step %d/%d loss %.4f", self.desc, step + 1, cfg.steps, rec["loss"])
                if on_step:
                    on_step(step + 1, rec)
                acc, n_acc = {}, 0
            bar.update(1)
            if ckpt is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                    and step + 1 < cfg.steps:
                atomic_torch_save({"model": self.accelerator.unwrap_model(model).state_dict(),
                                   "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                   "rng": _rng_state(), "step": step + 1, "history": self.history}, ckpt)
        bar.close()
        model.eval()
        return self.history
