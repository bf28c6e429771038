"""kd step time against sft step time on SmolLM2, with and without the teacher cache.

The `smol` pair (teacher SmolLM2-135M-Instruct, student prune:drop=5-19), real Dolly sequences
rendered as the preset renders them, the real training path: `make_method(name).train(ctx)` through
MethodContext and the Trainer (chunked losses, AdamW, clipping), batch --batch of at most --length
tokens. Three rows, alternated over --rounds so a change in the machine's load hits all of them:
  * sft: cross-entropy on gold;
  * kd (live teacher): 0.5 CE + 0.5 forward KL, a teacher forward every step;
  * kd (teacher cache): the same loss, the teacher's top-k from the cache stage (train.teacher_cache
    topk, k = --k), built once before the timing (its build time is reported separately).
A step is the time between two batches the trainer asks for (forward, loss, backward, optimizer),
in wall time and in the process's CPU time; the first step of each run is dropped (allocation,
kernel choice).

    python benchmarks/bench_kd_step.py --data-dir DATA [--steps 3 --rounds 3 --k 256]

Writes benchmarks/results/kd_step.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402

import torch  # noqa: E402

from _common import machine_info, portable, write_results  # noqa: E402
from kdbench.config import TrainConfig  # noqa: E402
from kdbench.method import MethodContext, make_method  # noqa: E402
from kdbench.models import load_model, load_tokenizer, resolve_model_name  # noqa: E402
from kdbench.plugins import load_plugins  # noqa: E402
from kdbench.pruning import parse_prune_spec, prune_model  # noqa: E402
from kdbench.schema import Example  # noqa: E402
from kdbench.taskset import user_turn  # noqa: E402
from kdbench.teacher_store import local_stage  # noqa: E402


def dolly_examples(tok, data_dir: str, n: int, max_prompt: int) -> list[Example]:
    recs = [json.loads(x) for x in (Path(data_dir) / "dolly" / "minillm" / "dev.jsonl").read_text().splitlines()]
    out = []
    for j, r in enumerate(recs):
        ex = Example(id=f"dolly-{j}", instruction=r["instruction"], input=r.get("input", ""), prompt="",
                     references=[r["output"]])
        ex.prompt = tok.apply_chat_template([{"role": "user", "content": user_turn(ex, "chat")}], tokenize=False,
                                            add_generation_prompt=True)
        if len(tok(ex.prompt, add_special_tokens=False)["input_ids"]) <= max_prompt:
            out.append(ex)
        if len(out) == n:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="folder with dolly/minillm/dev.jsonl")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--max-prompt", type=int, default=192)
    ap.add_argument("--examples", type=int, default=32, help="the fixed set (and what the cache holds)")
    ap.add_argument("--steps", type=int, default=3, help="per run; the first is dropped")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--from-json", help="rewrite the table from a saved kd_step.json's step times (no timing)")
    args = ap.parse_args()
    if args.from_json:
        d = json.loads(Path(args.from_json).read_text())
        write(d["machine"], argparse.Namespace(**d["args"]), d["cache_build_s"], d["step_times_s"],
              d.get("examples", d["args"]["examples"]), d.get("step_cpu_s"))
        return
    if not args.data_dir:
        ap.error("--data-dir is required (a folder with dolly/minillm/dev.jsonl)")
    machine = machine_info()
    print("machine:", machine, flush=True)
    torch.set_num_threads(args.threads)
    load_plugins()
    path = resolve_model_name("smollm2-135m-instruct")
    tok = load_tokenizer(path)
    teacher = load_model(path).eval()
    base, _ = prune_model(teacher, parse_prune_spec("prune:drop=5-19"))
    exs = dolly_examples(tok, args.data_dir, args.examples, args.max_prompt)
    stage_root = Path(tempfile.mkdtemp(prefix="kd-step-"))

    def context(cache: bool, with_teacher: bool) -> MethodContext:
        train = TrainConfig(steps=args.steps, batch_size=args.batch, lr=1e-5, log_every=1, seed=10,
                            teacher_cache="topk" if cache else "none", teacher_cache_k=args.k)
        ctx = MethodContext(student=copy.deepcopy(base), teacher=teacher if with_teacher else None, tokenizer=tok,
                            train_examples=exs, train_cfg=train, max_length=args.length,
                            max_prompt_length=args.max_prompt, run_dir=None, device="cpu", progress=False,
                            method_name="bench", teacher_cache_fn=local_stage(stage_root, teacher))
        ctx.vocab_size = len(tok)
        return ctx

    # the cache stage, built once (what every method and seed then reads)
    t = time.perf_counter()
    warm = context(True, True)
    warm.guided_examples()
    warm.teacher_outputs(warm.encode(exs[: args.batch]))
    build_s = time.perf_counter() - t
    print(f"cache stage built in {build_s:.1f} s ({len(exs)} sequences, k={args.k})", flush=True)

    runs = {"sft": ("sft", False, False), "kd (live teacher)": ("kd", False, True),
            "kd (teacher cache)": ("kd", True, True)}
    times: dict[str, list[float]] = {r: [] for r in runs}
    cpu: dict[str, list[float]] = {r: [] for r in runs}  # process CPU time: less swayed by other processes
    for rnd in range(args.rounds):
        for row, (method, cache, with_teacher) in runs.items():
            ctx = context(cache, with_teacher)
            stamps = []
            fit = ctx.fit

            def timed_fit(loss_fn, batches, fit=fit, stamps=stamps):
                def stream():
                    for b in batches:
                        stamps.append((time.perf_counter(), time.process_time()))
                        yield b
                out = fit(loss_fn, stream())
                stamps.append((time.perf_counter(), time.process_time()))
                return out

            ctx.fit = timed_fit
            make_method(method).train(ctx)
            steps = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])][1:]
            cpu_steps = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])][1:]
            times[row] += steps
            cpu[row] += cpu_steps
            if cache:
                assert ctx.counters.get("teacher_forward_tokens", 0) == 0, "the cached run called the teacher"
            print(f"round {rnd + 1} {row}: wall " + ", ".join(f"{s:.2f}" for s in steps) + " s/step; cpu "
                  + ", ".join(f"{s:.2f}" for s in cpu_steps) + " s/step", flush=True)
    write(machine, args, build_s, times, len(exs), cpu)


def ratio_ci(a: list[float], b: list[float], n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of mean(a) / mean(b). Every run trains on the same batches in the same
    order (seed 10), so step i of one row and step i of another saw the same batch: the steps are
    resampled as pairs, and the batch-to-batch spread of step time (sequence lengths) cancels. Rows of
    unequal length (a saved file from another layout) are resampled independently."""
    import random

    rng = random.Random(seed)
    if len(a) == len(b):
        idx = range(len(a))
        rs = []
        for _ in range(n):
            pick = rng.choices(idx, k=len(a))
            rs.append(sum(a[i] for i in pick) / sum(b[i] for i in pick))
    else:
        rs = [statistics.mean(rng.choices(a, k=len(a))) / statistics.mean(rng.choices(b, k=len(b)))
              for _ in range(n)]
    rs.sort()
    return rs[int(0.025 * n)], rs[int(0.975 * n) - 1]


def write(machine: dict, args, build_s: float, times: dict[str, list[float]], n_exs: int,
          cpu: dict[str, list[float]] | None = None) -> None:
    table = []
    for r, v in times.items():
        lo, hi = ratio_ci(v, times["sft"])
        row = {"row": r, "steps": len(v), "mean_step_s": statistics.mean(v), "min_step_s": min(v),
               "vs_sft": statistics.mean(v) / statistics.mean(times["sft"]), "vs_sft_ci95": f"[{lo:.2f}, {hi:.2f}]"}
        if cpu:
            lo, hi = ratio_ci(cpu[r], cpu["sft"])
            row.update(cpu_step_s=statistics.mean(cpu[r]), cpu_vs_sft=statistics.mean(cpu[r]) / statistics.mean(cpu["sft"]),
                       cpu_vs_sft_ci95=f"[{lo:.2f}, {hi:.2f}]")
        table.append(row)
    payload = {"machine": machine, "args": {**vars(args), "data_dir": portable(args.data_dir)}, "cache_build_s": build_s, "step_times_s": times,
               "step_cpu_s": cpu, "examples": n_exs, "rows": table}
    notes = (f"SmolLM2-135M-Instruct teacher, prune:drop=5-19 student, {n_exs} Dolly records (chat-rendered, "
             f"prompts <= {args.max_prompt} tokens, sequences <= {args.length}), batch {args.batch}, {args.threads} "
             f"threads, {args.rounds} alternating rounds of {args.steps} steps (first dropped). Teacher cache: top-{args.k}, "
             f"its stage built once in {build_s:.1f} s before the timing (a teacher forward over the {n_exs} "
             f"sequences, read by every later method, epoch and seed). vs_sft: mean step / sft's mean step, "
             "with a 95 % bootstrap interval over the steps, resampled as pairs (every run sees the same batches in the same order); cpu_*: the same in the process's CPU time (all its "
             "threads), which other processes on a shared machine sway less than wall time.")
    write_results("kd_step", payload, table,
                  ["row", "steps", "mean_step_s", "min_step_s", "vs_sft", "vs_sft_ci95", "cpu_step_s", "cpu_vs_sft",
                   "cpu_vs_sft_ci95"], notes)


if __name__ == "__main__":
    main()
