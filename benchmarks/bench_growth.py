"""Step time and peak memory of sft / kd / gkd training steps as sequence length and vocabulary grow,
chunked vs unchunked losses side by side.

For each (method, sequence length L, vocabulary V, chunked_loss) a fresh process builds a synthetic
word tokenizer of V words, a tiny Llama teacher (128 wide, 2 layers) and student (64 wide, 2 layers)
with that vocabulary, and one batch of B sequences of L tokens (a quarter prompt, then the response, as
a real SFT batch); then it runs the method's step through MethodContext (forward, loss, backward: the
work TrainConfig.chunked_loss changes; the optimizer's update is O(parameters) in both modes and is
left out). One warm-up step (kernels' code paged in, gradients allocated), then --steps timed steps:
  * time: the median of the timed steps' wall times (one thread);
  * step peak: the timed steps' memory high-water mark above what was resident before them (CPU: VmHWM,
    reset through /proc/self/clear_refs, minus VmRSS; CUDA: max_memory_allocated minus
    memory_allocated), i.e. what the step itself needs on top of weights and gradients;
  * process peak: the child's ru_maxrss (weights, gradients, the warm-up step and everything).
Each configuration runs in its own process, so one's freed memory cannot hide another's peak.
gkd runs with lmbda 0: its loss on a fixed batch of responses (the gold ones stand in for the sampled
ones, same lengths); sampling is not what this measures. Chunks: TrainConfig's defaults
(loss_chunk_tokens 256, loss_chunk_elements 256 x 32,768), unless --chunk-tokens / --chunk-elements.

The machine is shared with other jobs: times are medians of a few steps and still noisy (the load
average at the start is printed and recorded); the memory numbers do not depend on the load.

    python benchmarks/bench_growth.py [--lengths 256,512,1024] [--vocabs 8000,32000,49152,128000]
        [--methods sft,kd,gkd] [--batch 1 --steps 3] [--device cpu]

Writes benchmarks/results/growth.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine_info, write_results  # noqa: E402

MB = 2 ** 20


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def one(method: str, length: int, vocab: int, mode: str, args) -> dict:
    """The measurement in this process (called in a fresh child per configuration)."""
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

    prompt = length // 4
    exs = [Example(f"x{i}", "", "", words(prompt), [words(length - prompt - 1)]) for i in range(args.batch)]

    def llama(hidden, layers, seed):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=V, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=length,
                          bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return LlamaForCausalLM(cfg).to(args.device)

    chunks = {k: v for k, v in (("loss_chunk_tokens", args.chunk_tokens), ("loss_chunk_elements", args.chunk_elements))
              if v}
    train = TrainConfig(steps=1, batch_size=args.batch, log_every=1, chunked_loss=mode, **chunks)
    ctx = MethodContext(student=llama(64, 2, 1), teacher=llama(128, 2, 2).eval(), tokenizer=tok, train_examples=exs,
                        train_cfg=train, max_length=length, max_prompt_length=prompt, run_dir=None,
                        device=args.device, method_name=method, progress=False)
    ctx.vocab_size = V
    out: dict = {"rows_per_chunk": ctx.loss_chunk}
    cuda = args.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def fit(loss_fn, batches):
        batch = next(iter(batches))
        loss_fn(batch).loss.backward()  # warm-up
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before = _status_kb("VmRSS") * 1024
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            loss = loss_fn(batch).loss
            loss.backward()
            sync()
            times.append(time.perf_counter() - t0)
        peak = (torch.cuda.max_memory_allocated() if cuda else _status_kb("VmHWM") * 1024) - before
        out.update(loss=float(loss), step_peak_mb=peak / MB, step_s=statistics.median(times), step_times=times,
                   response_rows=int(batch.loss_mask.sum()), tokens=int(batch.attention_mask.sum()))
    ctx.fit = fit
    make_method(method, {"lmbda": 0.0} if method == "gkd" else None).train(ctx)
    out["process_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"method": method, "length": length, "vocab": V, "chunked_loss": mode, **out}


def _table(rows: list[dict]) -> list[dict]:
    table = []
    for r_off in [r for r in rows if r["chunked_loss"] == "off"]:
        r_on = next(r for r in rows if r["chunked_loss"] == "on" and all(r[k] == r_off[k] for k in
                                                                           ("method", "length", "vocab")))
        table.append({"method": r_off["method"], "L": r_off["length"], "vocab": r_off["vocab"],
                      "resp. rows": r_off["response_rows"], "rows/chunk": r_on["rows_per_chunk"],
                      "[rows, V] fp32 MB": round(r_off["response_rows"] * r_off["vocab"] * 4 / MB, 1),
                      "step peak MB off": round(r_off["step_peak_mb"], 1),
                      "step peak MB on": round(r_on["step_peak_mb"], 1),
                      "process peak MB off": round(r_off["process_peak_mb"]),
                      "process peak MB on": round(r_on["process_peak_mb"]),
                      "step s off": round(r_off["step_s"], 3), "step s on": round(r_on["step_s"], 3),
                      "loss rel. diff": f"{abs(r_on['loss'] - r_off['loss']) / abs(r_off['loss']):.1e}"})
    return table


def plot(rows: list[dict], path: Path) -> None:
    """Step peak memory and step time against V (at the longest L) and against L (at the largest V)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    Lmax, Vmax = max(r["length"] for r in rows), max(r["vocab"] for r in rows)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    colors = dict(zip(methods, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]))
    for col, (xkey, fixed_key, fixed) in enumerate([("vocab", "length", Lmax), ("length", "vocab", Vmax)]):
        for row, (ykey, ylabel) in enumerate([("step_peak_mb", "step peak memory (MB)"),
                                               ("step_s", "step time, median (s)")]):
            ax = axes[row, col]
            for m in methods:
                for mode, style in (("off", "--"), ("on", "-")):
                    pts = sorted((r[xkey], r[ykey]) for r in rows if r["method"] == m and r["chunked_loss"] == mode
                                 and r[fixed_key] == fixed)
                    if pts:
                        ax.plot(*zip(*pts), style, marker="o", color=colors[m],
                                label=f"{m}, {'chunked' if mode == 'on' else 'unchunked'}")
            ax.set_xscale("log", base=2)
            xs = sorted({r[xkey] for r in rows})
            ax.set_xticks(xs, [f"{x // 1000}k" if xkey == "vocab" else str(x) for x in xs])
            ax.minorticks_off()
            ax.set_xlabel("vocabulary" if xkey == "vocab" else "sequence length (tokens)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{ylabel.split(' (')[0]} vs {'V' if xkey == 'vocab' else 'L'} "
                         f"({'L' if xkey == 'vocab' else 'V'} = {fixed:,})")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("sft / kd / gkd training step (forward, loss, backward), chunked vs unchunked losses")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="256,512,1024")
    ap.add_argument("--vocabs", default="8000,32000,49152,128000")
    ap.add_argument("--methods", default="sft,kd,gkd")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration (the median is reported)")
    ap.add_argument("--chunk-tokens", type=int, default=0, help="train.loss_chunk_tokens (0: the default)")
    ap.add_argument("--chunk-elements", type=int, default=0, help="train.loss_chunk_elements (0: the default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--replot", metavar="JSON", help="only redraw growth.png from a growth.json")
    ap.add_argument("--one", nargs=4, metavar=("METHOD", "LENGTH", "VOCAB", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one(args.one[0], int(args.one[1]), int(args.one[2]), args.one[3], args)))
        return 0
    if args.replot:
        plot(json.loads(Path(args.replot).read_text())["rows"], Path(args.replot).with_suffix(".png"))
        return 0
    machine = machine_info()  # load average first, before this script adds to it
    print(f"load average at start: {machine.get('loadavg_1_5_15')}", flush=True)
    common = ["--batch", str(args.batch), "--steps", str(args.steps), "--chunk-tokens", str(args.chunk_tokens),
              "--chunk-elements", str(args.chunk_elements), "--device", args.device]
    # a fixed mmap threshold: glibc then returns every large tensor's memory when it is freed, so RSS
    # follows the live tensors (its default adaptive threshold would keep freed [N, V] blocks resident)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDBENCH_NO_PROGRESS": "1", "MALLOC_MMAP_THRESHOLD_": "131072",
           "MALLOC_TRIM_THRESHOLD_": "131072"}
    rows, t_start = [], time.time()
    for length in [int(x) for x in args.lengths.split(",")]:
        for vocab in [int(v) for v in args.vocabs.split(",")]:
            for method in args.methods.split(","):
                for mode in ("off", "on"):
                    proc = subprocess.run([sys.executable, __file__, "--one", method, str(length), str(vocab), mode,
                                           *common], capture_output=True, text=True, env=env,
                                          cwd=Path(__file__).resolve().parents[1])
                    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                    if proc.returncode or not line:
                        raise SystemExit(f"{method} L={length} V={vocab} {mode} failed:\n{proc.stderr[-3000:]}")
                    r = json.loads(line[0][7:])
                    print(f"{method:4s} L={length:5d} V={r['vocab']:6d} chunked={mode:3s} step peak "
                          f"{r['step_peak_mb']:8.1f} MB, process peak {r['process_peak_mb']:7.0f} MB, step "
                          f"{r['step_s']:.3f} s (loss {r['loss']:.5f}; {time.time() - t_start:.0f} s so far)", flush=True)
                    rows.append(r)
    out_dir = Path(args.out) if args.out else RESULTS
    notes = (f"One training step (forward, loss, backward; no optimizer update) of B={args.batch} sequence(s) of L "
             "tokens (a quarter of them prompt), tiny Llama student (64 wide, 2 layers) and teacher (128, 2), "
             f"device {args.device}, one thread, chunks from TrainConfig's defaults (rows/chunk column). Step peak = "
             "the timed steps' memory high-water mark above what was resident before them (CPU: VmHWM - VmRSS); "
             "process peak = the child's ru_maxrss (weights, gradients and the warm-up step included). Step s = "
             f"median of {args.steps} steps after a warm-up; the machine was shared with other jobs, so times are "
             "noisy. gkd runs its loss on a fixed batch (lmbda 0: gold responses stand in for sampled ones; no "
             "sampling). Plot: growth.png.\n\n"
             f"python benchmarks/bench_growth.py --lengths {args.lengths} --vocabs {args.vocabs} --methods "
             f"{args.methods} --batch {args.batch} --steps {args.steps} --device {args.device}"
             + (f" --chunk-tokens {args.chunk_tokens}" if args.chunk_tokens else "")
             + (f" --chunk-elements {args.chunk_elements}" if args.chunk_elements else ""))
    load_end = list(os.getloadavg())  # the load can rise during a long run: both ends are recorded
    print(f"load average at the end: {load_end}", flush=True)
    notes += f"\n\nLoad average at the end: {[round(x, 2) for x in load_end]}."
    payload = {"machine": machine, "args": {k: v for k, v in vars(args).items() if k != "one"}, "rows": rows,
               "wall_s": time.time() - t_start, "loadavg_end": load_end}
    table = _table(rows)
    write_results("growth", payload, table, list(table[0]), notes, out_dir)
    plot(rows, out_dir / "growth.png")
    print(f"wrote {out_dir / 'growth.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
