"""Per KD method: student training tokens/s and peak memory, each method in its own process.

    python benchmarks/bench_methods.py                       # preset ci, every method, 20 steps each
    python benchmarks/bench_methods.py --preset tiny --steps 50 --methods sft,kd,gkd,minillm

The shared stages (tokenizer, base teacher and student, teacher SFT, SeqKD teacher samples) are
built first in one process and cached in <out>/cache, so the per-method numbers are the method's
own training only, as in a benchmark that reuses them. Then one fresh process per method runs its
train cell; each reports
  - student_tok_per_s: student forward tokens (the cost counter `student_tokens`: every token the
    student reads in a forward with gradients, rollout tokens included) / wall time of the cell,
  - steps_per_s, teacher forward tokens and generated tokens (the cost table's counters),
  - peak memory: the process's max RSS (getrusage), its RSS before training (imports, data) and
    the difference; on CUDA also torch.cuda.max_memory_allocated.
The student SFT is itself a cached stage (MiniLLM and GKD start from it): the `sft` row measures
building it. Results: benchmarks/results/bench_methods.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine_info, python, run_json, write_results  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _bench(run_args: list[str]):
    from kdbench.cli import build_parser, resolve_config
    from kdbench.runner import Benchmark

    args = build_parser().parse_args(run_args)
    cfg = resolve_config(args)
    return Benchmark(cfg, Path(args.out), progress=False), cfg


def worker(what: str, run_args: list[str]) -> dict:
    logging.basicConfig(level=logging.WARNING)
    bench, cfg = _bench(run_args)
    student = cfg.students[0]
    if what == "prepare":
        t0 = time.time()
        bench.stages.teacher_model()
        bench.stages.student_base(student)
        bench.stages.teacher_samples()
        if "sft" not in cfg.methods:  # GKD / MiniLLM start from it; otherwise built by the sft row
            bench.stages.student_sft(student)
        return {"prepare_s": round(time.time() - t0, 2)}
    import torch
    # transformers imports model classes lazily (~5-10 s here): do it before the clock starts
    from transformers import GPT2LMHeadModel, LlamaForCausalLM  # noqa: F401

    from kdbench.trainer import get_accelerator

    get_accelerator(cfg.device, cfg.dtype)
    rss0 = _rss_mb()
    t0 = time.time()
    res = bench.cells.train_cell(student, what)
    wall = res.get("train_wall_time_s") or (time.time() - t0)
    train = cfg.train_config_for(what)
    c = res.get("counters", {})
    out = {"method": what, "wall_s": round(wall, 3), "steps": train.steps,
           "steps_per_s": round(train.steps / wall, 3) if wall else None,
           "student_tokens": c.get("student_tokens", 0),
           "student_tok_per_s": round(c.get("student_tokens", 0) / wall, 1) if wall else None,
           "teacher_forward_tokens": c.get("teacher_forward_tokens", 0),
           "generated_tokens": c.get("generated_tokens", 0),
           "rss_before_mb": round(rss0, 1), "peak_rss_mb": round(_rss_mb(), 1)}
    out["train_rss_mb"] = round(out["peak_rss_mb"] - rss0, 1)
    if torch.cuda.is_available():
        out["cuda_peak_alloc_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main() -> int:
    if sys.argv[1:2] == ["--worker"]:  # the rest are run_bench.py arguments, untouched by our parser
        print(json.dumps(worker(sys.argv[2], sys.argv[3:])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="ci", help="kdbench preset for models, data and lengths (default ci)")
    p.add_argument("--methods", default="all", help="comma-separated, or 'all' registered methods")
    p.add_argument("--steps", type=int, default=20, help="distillation steps per method (overrides the preset)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--out", help="work folder (default: a temp dir); its cache/ is reused on a rerun")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()

    from kdbench.method import METHODS
    from kdbench.plugins import load_plugins

    load_plugins()
    methods = sorted(METHODS.names()) if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    if "sft" in methods:  # first: it builds the SFT stage the on-policy methods start from
        methods = ["sft"] + [m for m in methods if m != "sft"]
    out = Path(args.out or tempfile.mkdtemp(prefix="kdbench-bench-methods-"))
    machine = machine_info()
    base = ["--preset", args.preset, "--out", str(out), "--methods", ",".join(methods),
            "--set", f"threads={args.threads}", "--set", f"distill.steps={args.steps}"]
    env = {"OMP_NUM_THREADS": str(args.threads), "KDBENCH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    script = str(Path(__file__).resolve())
    print(f"preparing shared stages in {out} ...", file=sys.stderr)
    prep = run_json([python(), script, "--worker", "prepare", *base], env)
    rows = []
    for m in methods:
        print(f"  {m} ...", file=sys.stderr, end="", flush=True)
        try:
            r = run_json([python(), script, "--worker", m, *base], env)
        except RuntimeError as e:
            r = {"method": m, "error": str(e).splitlines()[-1]}
        print(f" {r.get('student_tok_per_s', r.get('error'))} tok/s", file=sys.stderr)
        rows.append(r)
    payload = {"preset": args.preset, "steps": args.steps, "threads": args.threads, "machine": machine,
               "prepare": prep, "methods": rows,
               "loadavg_end": list(os.getloadavg())}
    cols = ["method", "steps", "wall_s", "steps_per_s", "student_tok_per_s", "teacher_forward_tokens",
            "generated_tokens", "peak_rss_mb", "train_rss_mb", "error"]
    write_results("bench_methods", payload, rows, cols,
                           notes=f"Preset `{args.preset}`, {args.steps} distillation steps per method, "
                                 f"{args.threads} torch thread(s), one process per method. student_tok_per_s = "
                                 "student forward tokens (incl. rollouts) / cell wall time; peak_rss_mb = max RSS "
                                 "of the method's process, train_rss_mb = its growth during training.",
                           out_dir=Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
