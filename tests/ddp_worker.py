"""One rank of the 2-process training test (tests/engine/test_ddp.py); not a test module itself.

Launched with the variables torchrun / `accelerate launch` set (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT); accelerate then starts a gloo process group on CPU. Usage:
    python tests/ddp_worker.py OUT.json
Rank 0 writes the loss history to OUT.json and the final weights to OUT.json.pt, then trains the
same model with a LoRA adapter and writes OUT.json.lora and OUT.json.lora.pt.
"""
from __future__ import annotations

import json
import os
import sys

import torch

torch.set_num_threads(1)


def tiny_model(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=24, n_positions=32, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0, embd_pdrop=0,
                     attn_pdrop=0, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    return GPT2LMHeadModel(cfg)


def global_batches(batch_size: int = 8, seed: int = 0):
    """Seeded, so every rank (and the single-process run) sees the same global batches. Response
    lengths grow with the row, so the two ranks hold very different token counts and a per-rank
    token mean (or a mean of rank means) would give a different gradient."""
    from kdbench.data import collate

    g = torch.Generator().manual_seed(seed)
    while True:
        seqs = []
        for i in range(batch_size):
            p = torch.randint(2, 24, (3,), generator=g).tolist()
            r = torch.randint(2, 24, (1 + 3 * i,), generator=g).tolist()
            seqs.append((p, r))
        yield collate(seqs, pad_id=0)


def train(grad_accum: int, steps: int = 6, lora: bool = False):
    from kdbench.config import PeftConfig, TrainConfig
    from kdbench.method import cross_entropy
    from kdbench.trainer import LossOutput, Trainer

    model = tiny_model()
    if lora:  # a LoRA student (kdbench.adapters): only the adapter's gradients are summed over ranks
        from kdbench import adapters

        model = adapters.wrap(model, PeftConfig(method="lora", r=4, alpha=8, dropout=0.0), seed=0)

    def loss_fn(batch):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return LossOutput(cross_entropy(logits, batch.labels))

    cfg = TrainConfig(steps=steps, batch_size=8, grad_accum=grad_accum, lr=1e-2, clip_grad=1.0, warmup_steps=0,
                      log_every=1)
    trainer = Trainer(cfg, None, device="cpu", progress=False)
    history = trainer.fit(model, loss_fn, global_batches())
    return trainer, history, model


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = sys.argv[1]
    for suffix, lora in (("", False), (".lora", True)):  # one launch, both students: process start-up is the cost
        trainer, history, model = train(grad_accum=2, lora=lora)  # 8 rows -> 4 per rank -> 2 micro-batches of 2
        acc = trainer.accelerator
        if acc.is_main_process:
            with open(out + suffix, "w") as f:
                json.dump({"world": acc.num_processes, "distributed_type": str(acc.distributed_type),
                           "history": history}, f)
            torch.save(model.state_dict(), out + suffix + ".pt")
        acc.wait_for_everyone()
