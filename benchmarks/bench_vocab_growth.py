"""Peak memory of one sft / kd / gkd training step as the vocabulary grows, chunked vs unchunked losses.

For each (method, vocabulary, chunked_loss) a fresh process builds a synthetic word tokenizer of V
words, a tiny Llama teacher and student with that vocabulary, and one batch of B sequences of L
tokens (a prompt share, then the response, as a real SFT batch); then it runs the method's first
step through MethodContext (forward, loss, backward: the work TrainConfig.chunked_loss changes;
the optimizer's state is 2x the parameters in both modes and is left out) and records the peak memory
of a second step (the first pages in the kernels' code and allocates the gradients) above what was
resident before it:
  * CPU: the process's peak RSS (VmHWM, reset through /proc/self/clear_refs just before the step)
    minus its RSS before the step;
  * CUDA (--device cuda): torch.cuda.max_memory_allocated minus memory_allocated before the step.
gkd runs with lmbda 0 (its gold step): the divergence is the same function of the logits on either
data, and sampling is not what this measures.

Only memory is reported: the 2-core machine is shared with other jobs, so step times measured on it
are not reliable and are not given. The machine's load average at the start is recorded.

    python benchmarks/bench_vocab_growth.py [--vocabs 8000,32000,49152,128000] [--methods sft,kd,gkd]
        [--batch 4 --length 256 --prompt 64 --chunk 256] [--device cpu]

Writes benchmarks/results/vocab_growth.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, write_results  # noqa: E402

MB = 2 ** 20


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def one(method: str, vocab: int, mode: str, args) -> dict:
    """The measurement in this process (called in a fresh child per cell)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kdbench.config import TrainConfig
    from kdbench.method import MethodContext, make_method
    from kdbench.models import build_word_tokenizer
    from kdbench.plugins import load_plugins
    from kdbench.schema import Example

    load_plugins()

    torch.set_num_threads(1)
    tok = build_word_tokenizer(f"w{i}" for i in range(vocab - 3))  # + pad, eos, unk = vocab
    V = len(tok)
    g = torch.Generator().manual_seed(0)

    def words(n):
        return " ".join(f"w{int(i)}" for i in torch.randint(0, V - 3, (n,), generator=g))

    n_resp = args.length - args.prompt - 1  # + EOS
    exs = [Example(f"x{i}", "", "", words(args.prompt), [words(n_resp)]) for i in range(args.batch)]

    def llama(hidden, layers, seed):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=V, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=args.length,
                          bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return LlamaForCausalLM(cfg).to(args.device)

    train = TrainConfig(steps=1, batch_size=args.batch, log_every=1, chunked_loss=mode, loss_chunk_tokens=args.chunk)
    ctx = MethodContext(student=llama(64, 2, 1), teacher=llama(128, 2, 2).eval(), tokenizer=tok, train_examples=exs,
                        train_cfg=train, max_length=args.length, max_prompt_length=args.prompt, run_dir=None,
                        device=args.device, method_name=method, progress=False)
    ctx.vocab_size = V
    out: dict = {}

    def fit(loss_fn, batches):
        batch = next(iter(batches))
        rows = int(batch.loss_mask.sum())
        cuda = args.device.startswith("cuda")
        loss_fn(batch).loss.backward()  # warm-up: kernels' code paged in, grads allocated
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before = _status_kb("VmRSS") * 1024
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        loss = loss_fn(batch).loss
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
        else:
            peak = _status_kb("VmHWM") * 1024 - before
        out.update(loss=float(loss), step_peak_mb=peak / MB, response_rows=rows,
                   rows_x_vocab_fp32_mb=rows * V * 4 / MB, tokens=int(batch.attention_mask.sum()))
    ctx.fit = fit
    make_method(method, {"lmbda": 0.0} if method == "gkd" else None).train(ctx)
    return {"method": method, "vocab": V, "chunked_loss": mode, "loss_chunk_tokens": args.chunk, **out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocabs", default="8000,32000,49152,128000")
    ap.add_argument("--methods", default="sft,kd,gkd")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--one", nargs=3, metavar=("METHOD", "VOCAB", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one(args.one[0], int(args.one[1]), args.one[2], args)))
        return 0
    machine = machine_info()  # load average first, before this script adds to it
    print(f"load average at start: {machine.get('loadavg_1_5_15')}", flush=True)
    rows = []
    common = ["--batch", str(args.batch), "--length", str(args.length), "--prompt", str(args.prompt),
              "--chunk", str(args.chunk), "--device", args.device]
    # a fixed mmap threshold: glibc then returns every large tensor's memory when it is freed, so RSS
    # follows the live tensors (its default adaptive threshold would keep freed [N, V] blocks resident)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDBENCH_NO_PROGRESS": "1", "MALLOC_MMAP_THRESHOLD_": "131072",
           "MALLOC_TRIM_THRESHOLD_": "131072"}
    for vocab in [int(v) for v in args.vocabs.split(",")]:
        for method in args.methods.split(","):
            for mode in ("off", "on"):
                proc = subprocess.run([sys.executable, __file__, "--one", method, str(vocab), mode, *common],
                                      capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not line:
                    raise SystemExit(f"{method} V={vocab} {mode} failed:\n{proc.stderr[-3000:]}")
                r = json.loads(line[0][7:])
                print(f"{method:4s} V={r['vocab']:6d} chunked={mode:3s} step peak {r['step_peak_mb']:8.1f} MB "
                      f"(loss {r['loss']:.5f})", flush=True)
                rows.append(r)
    table = []
    for vocab in sorted({r["vocab"] for r in rows}):
        for method in args.methods.split(","):
            pair = {r["chunked_loss"]: r for r in rows if r["vocab"] == vocab and r["method"] == method}
            off, on = pair["off"], pair["on"]
            table.append({"method": method, "vocab": vocab, "response rows": off["response_rows"],
                          "[rows, V] fp32 MB": round(off["rows_x_vocab_fp32_mb"], 1),
                          "unchunked peak MB": round(off["step_peak_mb"], 1),
                          "chunked peak MB": round(on["step_peak_mb"], 1),
                          "ratio": round(off["step_peak_mb"] / max(on["step_peak_mb"], 1e-9), 2),
                          "loss rel. diff": f"{abs(on['loss'] - off['loss']) / abs(off['loss']):.1e}"})
    notes = (f"One step (forward, loss, backward; no optimizer) of B={args.batch} sequences of L={args.length} "
             f"tokens ({args.prompt}-token prompts), tiny Llama student (64 wide, 2 layers) and teacher (128, 2), "
             f"device {args.device}, chunk {args.chunk} rows. Peak = the step's memory high-water mark above what was "
             "resident before it (CPU: VmHWM - VmRSS). gkd runs its gold step (lmbda 0). Memory only: the machine "
             "is shared, so step times are not reliable and are not reported.\n\n"
             f"python benchmarks/bench_vocab_growth.py --vocabs {args.vocabs} --methods {args.methods} "
             f"--batch {args.batch} --length {args.length} --prompt {args.prompt} --chunk {args.chunk} "
             f"--device {args.device}")
    payload = {"machine": machine, "args": {k: v for k, v in vars(args).items() if k != "one"}, "rows": rows}
    cols = ["method", "vocab", "response rows", "[rows, V] fp32 MB", "unchunked peak MB", "chunked peak MB", "ratio",
            "loss rel. diff"]
    write_results("vocab_growth", payload, table, cols, notes, Path(args.out) if args.out else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
