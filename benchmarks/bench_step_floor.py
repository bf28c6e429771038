"""Where a kdbench on-policy step's time goes on the bench_vs_trl config, and how far each part is from its
arithmetic: each phase's measured time next to the time of its matmuls and attention alone.

    python benchmarks/bench_step_floor.py [--steps 40 --rounds 3]

The step is bench_vs_trl's kdbench side (gkd, lmbda 1, beta 0.5; GPT-2 student 64 x 2 and teacher 128 x 4;
batch 16, 24 new tokens; 1 thread), run in this process with each phase timed by a wrapper:
generation (MethodContext.sample), the teacher's forward on the rollouts, the student's forward, the
divergence, backward, clipping + AdamW, and the rest (batching, the trainer loop).

"arithmetic" is the same phase's matrix products and attention calls alone, at the step's shapes (the
median rollout's length), timed back to back on preallocated tensors: GPT-2's four projections per layer
and the lm_head (with their two gradient products per forward product in backward), sdpa (forward, and its
backward for the student), and for generation the prompt's forward and 23 decode steps over a growing
cache. Everything else a phase does (layer norms, GELU, softmaxes, the divergence, sampling, optimizer
updates, dispatch) is left out, so the arithmetic column is a floor no implementation of the same step on
this CPU and thread count can go under. `trl_ms` (from benchmarks/results/bench_vs_trl.json, its median
TRL DistillationTrainer step) gives what a 2x step must fit in.
Results: benchmarks/results/step_floor.{json,md}.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine_info, write_results  # noqa: E402

PHASES = ["generation", "teacher forward", "student forward", "divergence", "backward", "clip + optimizer"]


def measure_phases(work: Path, steps: int) -> dict:
    """ms per step of each phase, over steps 2..N of one run of bench_vs_trl's kdbench side, and the rollouts'
    shape (batch, median length)."""
    import json as _json

    import torch

    import bench_vs_trl
    from kdbench.config import TrainConfig
    from kdbench.method import MethodContext, make_method
    from kdbench.models import load_model, load_tokenizer
    from kdbench.plugins import load_plugins
    from kdbench.schema import Example

    torch.set_num_threads(1)
    spent: dict[str, float] = collections.defaultdict(float)
    shapes: list[tuple[int, int]] = []
    marks: list[float] = []

    def timed(label, fn):
        def run(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            if marks:  # the first step has ended
                spent[label] += time.perf_counter() - t
            return out
        return run

    S = bench_vs_trl.SETTING
    load_plugins()
    tok = load_tokenizer(str(work / "tok"))
    rows = [_json.loads(line) for line in (work / "data.jsonl").read_text().splitlines()]
    exs = [Example(str(i), "reverse", r["prompt"], r["prompt"], [r["completion"]]) for i, r in enumerate(rows)]
    student, teacher = load_model(str(work / "student")), load_model(str(work / "teacher"))
    cfg = TrainConfig(steps=steps, batch_size=S["batch_size"], lr=S["lr"], warmup_steps=0, schedule="linear",
                      min_lr=0.0, weight_decay=0.0, clip_grad=1.0, log_every=1, seed=S["seed"])
    ctx = MethodContext(student=student, teacher=teacher, tokenizer=tok, train_examples=exs, train_cfg=cfg,
                        max_length=16 + S["max_new_tokens"], max_prompt_length=16, run_dir=None, device="cpu",
                        method_name="gkd", progress=False)
    ctx.vocab_size = len(tok)
    ctx.sample = timed("generation", ctx.sample)
    ctx.divergence = timed("divergence", ctx.divergence)
    ctx.teacher_logits = timed("teacher forward", ctx.teacher_logits)
    logits = timed("student forward", ctx.logits)

    def student_logits(model, batch):
        if model is ctx.student:
            shapes.append(tuple(batch.input_ids.shape))
        return logits(model, batch)

    ctx.logits = student_logits
    acc = ctx.trainer.accelerator
    acc.backward = timed("backward", acc.backward)
    acc.clip_grad_norm_ = timed("clip + optimizer", acc.clip_grad_norm_)
    ctx.fit = lambda loss_fn, batches: ctx.trainer.fit(  # noqa: E731
        ctx.student, loss_fn, batches, on_step=lambda *a, **k: marks.append(time.perf_counter()))
    adamw_step = torch.optim.AdamW.step
    torch.optim.AdamW.step = timed("clip + optimizer", adamw_step)  # the class: the scheduler wraps the instance's
    try:
        make_method("gkd", {"lmbda": S["lmbda"], "beta": S["beta"], "temperature": S["temperature"]}).train(ctx)
    finally:
        torch.optim.AdamW.step = adamw_step
    n = len(marks) - 1
    step_ms = (marks[-1] - marks[0]) / n * 1e3
    phases = {p: spent[p] / n * 1e3 for p in PHASES}
    phases["rest (batching, trainer loop)"] = step_ms - sum(phases.values())
    return {"step_ms": step_ms, "phases_ms": phases, "batch": shapes[0][0],
            "length": int(statistics.median(s[1] for s in shapes))}


def _time(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def arithmetic_ms(work: Path, B: int, L: int, new: int, reps: int = 20) -> dict:
    """ms of each phase's matmuls and attention alone at the step's shapes (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    from kdbench.models import load_model

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)

    def dims(path):
        c = load_model(str(path)).config
        return c.n_embd, c.n_layer, c.n_head, c.vocab_size

    def forward_ops(C, layers, H, V, N, Bq, Lq, Lk):
        """Closures for one forward's products (N rows) and attention (Bq x H x Lq against Lk keys)."""
        prods = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)] * layers + [(C, V)]
        xs = [(torch.randn(N, i, generator=g), torch.randn(i, o, generator=g)) for i, o in prods]
        D = C // H
        q = torch.randn(Bq, H, Lq, D, generator=g)
        k, v = torch.randn(Bq, H, Lk, D, generator=g), torch.randn(Bq, H, Lk, D, generator=g)
        causal = Lq == Lk

        def fwd():
            for x, w in xs:
                x @ w
            for _ in range(layers):
                F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        gs = [torch.randn(N, w.shape[1], generator=g) for _, w in xs]
        qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
        og = torch.randn(Bq, H, Lq, D, generator=g)

        def bwd():
            for (x, w), gr in zip(xs, gs):
                gr @ w.t()
                x.t() @ gr
            for _ in range(layers):
                out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                torch.autograd.grad(out, (qg, kg, vg), og)
        return fwd, bwd

    Ct, lt, Ht, V = dims(work / "teacher")
    Cs, ls, Hs, _ = dims(work / "student")
    N = B * L
    t_fwd, _ = forward_ops(Ct, lt, Ht, V, N, B, L, L)
    s_fwd, s_bwd = forward_ops(Cs, ls, Hs, V, N, B, L, L)
    P = L - new  # the prompt
    pre, _ = forward_ops(Cs, ls, Hs, V, B * P, B, P, P)
    steps = [forward_ops(Cs, ls, Hs, V, B, B, 1, P + i + 1)[0] for i in range(new - 1)]
    return {"generation": _time(pre, reps) + sum(_time(s, reps) for s in steps),
            "teacher forward": _time(t_fwd, reps), "student forward": _time(s_fwd, reps),
            "backward": _time(s_bwd, reps)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    machine = machine_info()
    print(f"load average at the start: {machine.get('loadavg_1_5_15')}", flush=True)
    import bench_vs_trl

    trl_file = ROOT / "benchmarks" / "results" / "bench_vs_trl.json"
    trl_ms = None
    if trl_file.exists():
        trl_ms = 1e3 / json.loads(trl_file.read_text())["median_steps_per_s"].get("trl-distill", float("nan"))
    runs, floors = [], []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        bench_vs_trl.make_assets(work)
        for r in range(args.rounds):
            runs.append(measure_phases(work, args.steps))
            floors.append(arithmetic_ms(work, runs[-1]["batch"], runs[-1]["length"],
                                        bench_vs_trl.SETTING["max_new_tokens"]))
            print(f"round {r + 1}: step {runs[-1]['step_ms']:.1f} ms", flush=True)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    rows = []
    for p in PHASES + ["rest (batching, trainer loop)"]:
        m = med([x["phases_ms"][p] for x in runs])
        a = med([f[p] for f in floors]) if p in floors[0] else 0.0
        rows.append({"phase": p, "measured_ms": round(m, 2), "arithmetic_ms": round(a, 2),
                     "arithmetic_share": f"{100 * a / m:.0f} %" if m > 0 and a else "-"})
    step, floor = med([x["step_ms"] for x in runs]), med([sum(f.values()) for f in floors])
    rows.append({"phase": "step", "measured_ms": round(step, 2), "arithmetic_ms": round(floor, 2),
                 "arithmetic_share": f"{100 * floor / step:.0f} %"})
    note = (f"bench_vs_trl's kdbench side in one process, {args.steps} steps per round (steps 2..N timed), "
            f"{args.rounds} rounds, medians; rollouts {runs[0]['batch']} x {runs[0]['length']} tokens (median "
            "length). arithmetic: the phase's matmuls and attention alone at those shapes (a floor: norms, GELU, "
            "softmaxes, the divergence's own arithmetic, sampling and the optimizer are left out).")
    if trl_ms is not None:
        note += (f" TRL DistillationTrainer's median step in benchmarks/results/bench_vs_trl.json: {trl_ms:.1f} ms, "
                 f"so a 2x step must fit in {trl_ms / 2:.1f} ms (a different run: the machine's speed drifts).")
    write_results("step_floor", {"machine": machine, "runs": runs, "arithmetic": floors, "trl_ms": trl_ms}, rows,
                  ["phase", "measured_ms", "arithmetic_ms", "arithmetic_share"], note, out_dir=Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
