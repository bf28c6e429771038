"""What a cheaper teacher stage could gain: the default (`tiny`) teacher's training step, variants side by side.

The tiny preset's teacher stages (pretraining 600 steps and SFT 1800 steps of gpt2-toy-m at batch 32)
are most of the default run's fixed cost. This times that teacher's real training loop (kdbench's
Trainer.fit: forward, loss, backward, clipping, AdamW, schedule, logging, checkpoints every 100 steps)
on pretraining-shaped blocks (48 tokens, the toy vocabulary) for variants that would change the stage's
cost, in alternating rounds so that the shared machine's load hits every variant alike:
  * base: batch 32, GPT-2's gelu_new (transformers' Python tanh formula), as the preset;
  * batch64: batch 64 for half the steps (the same tokens; fewer per-step round trips);
  * gelu_tanh: torch's fused tanh-GELU (`gelu_pytorch_tanh`, the same function up to rounding).
Reported: milliseconds per 32 sequences (median over rounds), and the ratio to base. Only cost is
measured here: any variant changes the trained teacher, so adopting one needs a full default run (the
teacher's validity and the students' verdicts).

    python benchmarks/bench_teacher_step.py [--rounds 3 --steps 60 --threads 0]

Writes benchmarks/results/bench_teacher_step.{json,md}.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, write_results  # noqa: E402

VARIANTS = {"base": (32, "gelu_new"), "batch64": (64, "gelu_new"), "gelu_tanh": (32, "gelu_pytorch_tanh")}


def time_variant(name: str, tok, steps32: int) -> float:
    """Seconds per 32 sequences of the teacher's training loop in this variant."""
    import torch

    from kdbench.config import TrainConfig
    from kdbench.data import lm_batch
    from kdbench.models import build_preset_model
    from kdbench.token_ops import cross_entropy
    from kdbench.trainer import LossOutput, Trainer

    batch, act = VARIANTS[name]
    steps = steps32 * 32 // batch
    model = build_preset_model("gpt2-toy-m", tok, 48, seed=0)
    model.config.activation_function = act
    for block in model.transformer.h:  # the activation module is built from the config at init
        from transformers.activations import ACT2FN
        block.mlp.act = ACT2FN[act]
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, len(tok), (batch * 8, 49), generator=g)
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=2e-3, warmup_steps=5, log_every=50, checkpoint_every=100)

    def batches():
        i = 0
        while True:
            yield lm_batch(blocks[(i % 8) * batch:(i % 8 + 1) * batch])
            i += 1
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(cfg, Path(d), desc=name, device="cpu", progress=False)
        t0 = time.perf_counter()
        trainer.fit(model, lambda b: LossOutput(cross_entropy(model(input_ids=b.input_ids).logits, b.labels)), batches())
        return (time.perf_counter() - t0) / steps32


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60, help="batch-32-equivalent steps per variant and round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, as the preset)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    machine = machine_info()
    print(f"load average at start: {machine.get('loadavg_1_5_15')}", flush=True)
    import torch

    from kdbench.models import build_word_tokenizer
    from kdbench.task import TaskOptions
    from kdbench.presets import PRESETS
    from tasks.toy import ToyTask

    if args.threads:
        torch.set_num_threads(args.threads)
    task = ToyTask(TaskOptions(extra=dict(PRESETS.get("tiny").get("task_options", {}).get("toy", {}))))
    tok = build_word_tokenizer(task.vocabulary())
    for v in VARIANTS:  # warm-up: first-call costs (kernels, allocator) out of the timed rounds
        time_variant(v, tok, 4)
    times = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in VARIANTS:
            times[v].append(time_variant(v, tok, args.steps))
            print(f"round {r + 1} {v:9s} {times[v][-1] * 1e3:6.1f} ms / 32 sequences", flush=True)
    base = statistics.median(times["base"])
    table = [{"variant": v, "batch": VARIANTS[v][0], "activation": VARIANTS[v][1],
              "ms per 32 seqs (median)": round(statistics.median(t) * 1e3, 1),
              "rounds (ms)": ", ".join(f"{x * 1e3:.1f}" for x in t),
              "vs base": round(statistics.median(t) / base, 3)} for v, t in times.items()]
    notes = (f"gpt2-toy-m (the tiny preset's teacher), toy vocabulary {len(tok)}, 48-token blocks, kdbench's Trainer, "
             f"{args.rounds} alternating rounds of {args.steps} batch-32-equivalent steps, torch threads "
             f"{torch.get_num_threads()}. The machine was shared with other jobs: times are noisy, compare the "
             "ratios of a round.\n\n"
             f"python benchmarks/bench_teacher_step.py --rounds {args.rounds} --steps {args.steps} --threads {args.threads}")
    write_results("bench_teacher_step", {"machine": machine, "args": {k: v for k, v in vars(args).items() if k != "out"}, "times_s": times}, table,
                  list(table[0]), notes, Path(args.out) if args.out else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
